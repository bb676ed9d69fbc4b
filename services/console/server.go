package console

import (
	"bytes"
	"context"
	"crypto/subtle"
	"embed"
	"fmt"
	"html/template"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// tokenCookie carries the token after the /login form.
const tokenCookie = "vigil_console_token"

// proofsOnPage is how many of the newest events the VM page proves inline.
const proofsOnPage = 10

// server renders the console's pages from the index.
type server struct {
	cfg    Config
	index  *Index
	audit  *auditView
	broker *broker
	pages  map[string]*template.Template
	frags  *template.Template
	// open: no token or proxy header is required (loopback only).
	open bool

	// The overview is computed at most once per overviewEvery and shared
	// by every page and the live stream.
	ovMu sync.Mutex
	ovAt time.Time
	ov   overviewView
}

func newServer(cfg Config, index *Index, audit *auditView) (*server, error) {
	s := &server{cfg: cfg, index: index, audit: audit, broker: newBroker(), pages: map[string]*template.Template{},
		open: cfg.Token == "" && cfg.ProxyHeader == ""}
	funcs := template.FuncMap{
		"ago":      ago,
		"utc":      func(t time.Time) string { return fmtTime(t) },
		"duration": func(d time.Duration) string { return d.String() },
		"state":    alertState,
		"pct": func(n, total int) int {
			if total == 0 {
				return 0
			}
			return n * 100 / total
		},
	}
	base, err := template.New("").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/fragments.html")
	if err != nil {
		return nil, err
	}
	s.frags = base
	for _, p := range []string{"fleet", "vm", "alerts", "audit", "login", "proof"} {
		t, err := base.Clone()
		if err != nil {
			return nil, err
		}
		if _, err := t.ParseFS(templateFS, "templates/"+p+".html"); err != nil {
			return nil, err
		}
		s.pages[p] = t
	}
	return s, nil
}

// routes adds the console's routes; done ends the live streams.
func (s *server) routes(handle func(string, http.Handler), done <-chan struct{}) {
	static, _ := fs.Sub(staticFS, "static")
	files := http.FileServerFS(static)
	handle("GET /static/", s.guard(http.StripPrefix("/static/", files), false))
	handle("GET /favicon.ico", s.guard(http.RedirectHandler("/static/favicon.svg", http.StatusMovedPermanently), false))
	handle("GET /login", s.guard(http.HandlerFunc(s.loginPage), false))
	handle("POST /login", s.guard(http.HandlerFunc(s.login), false))
	handle("GET /{$}", s.guard(http.HandlerFunc(s.fleetPage), true))
	handle("GET /vm/{key}", s.guard(http.HandlerFunc(s.vmPage), true))
	handle("GET /vm/{key}/proof/{seq}", s.guard(http.HandlerFunc(s.proofPage), true))
	handle("GET /alerts", s.guard(http.HandlerFunc(s.alertsPage), true))
	handle("GET /audit", s.guard(http.HandlerFunc(s.auditPage), true))
	handle("GET /events", s.guard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.broker.serve(w, r, s.cfg.Heartbeat, done)
	}), true))
}

// guard sets the security headers and, with auth, admits only requests
// with the token or the proxy's header (or, for the login page and the
// static files, anyone). Without auth (loopback) it refuses requests whose
// Host is not a loopback name, which a DNS-rebinding page would send.
func (s *server) guard(h http.Handler, private bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hd := w.Header()
		hd.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'")
		hd.Set("X-Content-Type-Options", "nosniff")
		hd.Set("Referrer-Policy", "no-referrer")
		hd.Set("X-Frame-Options", "DENY")
		if s.open {
			if !loopbackHost(r.Host) {
				http.Error(w, "the console answers loopback names only", http.StatusMisdirectedRequest)
				return
			}
		} else if private && !s.authorized(r) {
			if r.Header.Get("Accept") == "text/event-stream" || r.Header.Get("Authorization") != "" {
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

func (s *server) authorized(r *http.Request) bool {
	if s.cfg.ProxyHeader != "" && r.Header.Get(s.cfg.ProxyHeader) != "" {
		return true
	}
	if s.cfg.Token == "" {
		return false
	}
	given := ""
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		given = strings.TrimPrefix(a, "Bearer ")
	} else if c, err := r.Cookie(tokenCookie); err == nil {
		given = c.Value
	}
	return given != "" && subtle.ConstantTimeCompare([]byte(given), []byte(s.cfg.Token)) == 1
}

func (s *server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, "login", "Sign in", struct{ Failed bool }{r.URL.Query().Has("failed")})
}

func (s *server) login(w http.ResponseWriter, r *http.Request) {
	tok := r.PostFormValue("token")
	if s.cfg.Token == "" || subtle.ConstantTimeCompare([]byte(tok), []byte(s.cfg.Token)) != 1 {
		http.Redirect(w, r, "/login?failed", http.StatusSeeOther)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: tokenCookie, Value: tok, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: r.TLS != nil})
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

// page is what the layout renders.
type page struct {
	Title, Page string
	Data        any
}

func (s *server) render(w http.ResponseWriter, name, title string, data any) {
	var buf bytes.Buffer
	if err := s.pages[name].ExecuteTemplate(&buf, "layout", page{Title: title, Page: name, Data: data}); err != nil {
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

func (s *server) renderFragment(name string, data any) (string, error) {
	var buf bytes.Buffer
	if err := s.frags.ExecuteTemplate(&buf, name, data); err != nil {
		return "", err
	}
	return buf.String(), nil
}

// overviewView is the overview with its charts.
type overviewView struct {
	Overview
	Verdicts, Since Chart
}

func (s *server) overviewView(now time.Time) overviewView {
	s.ovMu.Lock()
	defer s.ovMu.Unlock()
	if !s.ovAt.IsZero() && now.Sub(s.ovAt) >= 0 && now.Sub(s.ovAt) < overviewEvery {
		return s.ov
	}
	o := s.index.Overview(now, s.cfg.Interval)
	s.ov, s.ovAt = overviewView{Overview: o, Verdicts: verdictsChart(o.Minutes), Since: sinceChart(o.SinceGood)}, now
	return s.ov
}

// rowView is a table row.
type rowView struct {
	Row
}

func (s *server) rowView(r Row, _ time.Time) rowView { return rowView{r} }

// fleetView is the fleet page: overview, filters and the table.
type fleetView struct {
	Overview  overviewView
	Table     Table
	Q         Query
	Statuses  []events.Status
	Platforms []string
	Rows      []rowView
	Prev      string
	Next      string
	Sorts     []sortLink
	PerSet    bool
}

type sortLink struct {
	Label, URL string
	Active     bool
}

// Bounds of the rows per page a URL may ask for (per=N).
const minPerPage, maxPerPage = 5, 500

func queryOf(r *http.Request, per int) Query {
	v := r.URL.Query()
	page, _ := strconv.Atoi(v.Get("page"))
	if n, err := strconv.Atoi(v.Get("per")); err == nil {
		per = min(max(n, minPerPage), maxPerPage)
	}
	return Query{Status: v.Get("status"), Platform: v.Get("platform"), RG: v.Get("rg"), Tag: v.Get("tag"), Text: v.Get("q"), Sort: v.Get("sort"), Page: page, PerPage: per}
}

func (q Query) url(page int, sort string) string {
	v := url.Values{}
	for k, x := range map[string]string{"status": q.Status, "platform": q.Platform, "rg": q.RG, "tag": q.Tag, "q": q.Text, "sort": sort} {
		if x != "" {
			v.Set(k, x)
		}
	}
	if page > 1 {
		v.Set("page", strconv.Itoa(page))
	}
	if q.perSet {
		v.Set("per", strconv.Itoa(q.PerPage))
	}
	if len(v) == 0 {
		return "/"
	}
	return "/?" + v.Encode()
}

func (s *server) fleetPage(w http.ResponseWriter, r *http.Request) {
	q := queryOf(r, s.cfg.PageSize)
	q.perSet = r.URL.Query().Has("per")
	if q.Status != "" && !slices.Contains(statuses, events.Status(q.Status)) {
		q.Status = ""
	}
	now := time.Now()
	v := fleetView{Overview: s.overviewView(now), Q: q, Statuses: statuses, Platforms: s.index.Platforms(), PerSet: q.perSet}
	v.Table = s.index.Table(q)
	v.Q.Page = v.Table.Page
	for _, row := range v.Table.Rows {
		v.Rows = append(v.Rows, s.rowView(row, now))
	}
	if v.Table.Page > 1 {
		v.Prev = q.url(v.Table.Page-1, q.Sort)
	}
	if v.Table.Page < v.Table.Pages {
		v.Next = q.url(v.Table.Page+1, q.Sort)
	}
	for _, k := range []struct{ key, label string }{{"name", "name"}, {"rg", "resource group"}, {"platform", "platform"}, {"status", "status"}, {"since", "since"}, {"attested", "last attested"}} {
		sort := k.key
		active := strings.TrimPrefix(q.Sort, "-") == k.key || (q.Sort == "" && k.key == "name")
		if active && !strings.HasPrefix(q.Sort, "-") {
			sort = "-" + k.key
		}
		v.Sorts = append(v.Sorts, sortLink{Label: k.label, URL: q.url(1, sort), Active: active})
	}
	s.render(w, "fleet", "Fleet", v)
}

// vmView is the VM page.
type vmView struct {
	Detail
	Reasons  []Explained
	Claims   []claim
	Timeline []timelineView
}

type claim struct {
	Name  string
	Value int8
	Words string
}

type timelineView struct {
	TimelineEntry
	Proof *Proof
}

func (s *server) vmPage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	d, ok := s.index.Detail(key)
	if !ok {
		http.NotFound(w, r)
		return
	}
	v := vmView{Detail: d, Reasons: explainAll(d.Status.Reasons)}
	if d.Verdict != nil {
		v.Reasons = explainAll(d.Verdict.Reasons)
		v.Claims = claims(d.Verdict.TrustVector)
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	for i, e := range d.Timeline {
		tv := timelineView{TimelineEntry: e}
		if i < proofsOnPage {
			p := s.audit.prove(ctx, e.Seq, e.EventID)
			tv.Proof = &p
		}
		v.Timeline = append(v.Timeline, tv)
	}
	s.render(w, "vm", d.Name, v)
}

// claims lists a trust vector's claims with their AR4SI meaning.
func claims(tv events.TrustVector) []claim {
	words := func(n int8) string {
		switch {
		case n == 0:
			return "no claim"
		case n == 1:
			return "verifier malfunction"
		case n >= 2 && n <= 31:
			return "affirming"
		case n >= 32 && n <= 95:
			return "warning"
		case n >= 96:
			return "contraindicated"
		}
		return "unrecognised"
	}
	cs := []claim{
		{"instance identity", tv.InstanceIdentity, ""}, {"configuration", tv.Configuration, ""}, {"executables", tv.Executables, ""},
		{"file system", tv.FileSystem, ""}, {"hardware", tv.Hardware, ""}, {"runtime opaque", tv.RuntimeOpaque, ""},
		{"storage opaque", tv.StorageOpaque, ""}, {"sourced data", tv.SourcedData, ""},
	}
	for i := range cs {
		cs[i].Words = words(cs[i].Value)
	}
	return cs
}

func (s *server) proofPage(w http.ResponseWriter, r *http.Request) {
	key := r.PathValue("key")
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil {
		http.NotFound(w, r)
		return
	}
	e, ok := s.index.Event(key, seq)
	if !ok {
		http.NotFound(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	p := s.audit.prove(ctx, seq, e.EventID)
	s.render(w, "proof", "Proof", struct {
		VM    string
		Event TimelineEntry
		Proof Proof
	}{key, e, p})
}

func (s *server) alertsPage(w http.ResponseWriter, r *http.Request) {
	v := r.URL.Query()
	q := AlertQuery{Severity: v.Get("severity"), Code: v.Get("code"), VM: v.Get("vm"), State: v.Get("state")}
	s.render(w, "alerts", "Alerts", struct {
		Q          AlertQuery
		Alerts     []Alert
		Severities []events.Severity
	}{q, s.index.Alerts(q), []events.Severity{events.SeverityCritical, events.SeverityHigh, events.SeverityWarning, events.SeverityInfo}})
}

func (s *server) auditPage(w http.ResponseWriter, r *http.Request) {
	cp, ver := s.audit.state()
	s.render(w, "audit", "Audit log", struct {
		Checkpoint   Checkpoint
		Verification Verification
		Configured   bool
		Every        time.Duration
	}{cp, ver, s.audit.configured(), s.cfg.VerifyEvery})
}

// ago says how long ago t was ("never" for the zero time).
func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	switch {
	case d < 0:
		return "just now"
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "—"
	}
	return t.UTC().Format("2006-01-02 15:04:05 UTC")
}
