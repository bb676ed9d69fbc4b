package console

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// TestAccess: without auth only loopback names are answered; with a token
// or a proxy header only requests carrying them see the pages.
func TestAccess(t *testing.T) {
	x := NewIndex()
	fillIndex(x, 3, time.Now())
	for _, tc := range []struct {
		name   string
		cfg    Config
		host   string
		header map[string]string
		cookie string
		want   int
	}{
		{"loopback open", Config{}, "127.0.0.1:8088", nil, "", http.StatusOK},
		{"localhost open", Config{}, "localhost:8088", nil, "", http.StatusOK},
		{"rebinding refused", Config{}, "evil.example:8088", nil, "", http.StatusMisdirectedRequest},
		{"token missing", Config{Addr: "0.0.0.0:8088", Token: "s3cret"}, "console.example", nil, "", http.StatusSeeOther},
		{"token wrong", Config{Addr: "0.0.0.0:8088", Token: "s3cret"}, "console.example", map[string]string{"Authorization": "Bearer nope"}, "", http.StatusUnauthorized},
		{"token bearer", Config{Addr: "0.0.0.0:8088", Token: "s3cret"}, "console.example", map[string]string{"Authorization": "Bearer s3cret"}, "", http.StatusOK},
		{"token cookie", Config{Addr: "0.0.0.0:8088", Token: "s3cret"}, "console.example", nil, "s3cret", http.StatusOK},
		{"proxy header", Config{Addr: "0.0.0.0:8088", ProxyHeader: "X-Forwarded-User"}, "console.example", map[string]string{"X-Forwarded-User": "alice"}, "", http.StatusOK},
		{"proxy header missing", Config{Addr: "0.0.0.0:8088", ProxyHeader: "X-Forwarded-User"}, "console.example", nil, "", http.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, hs := testServer(t, tc.cfg, x)
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.Host = tc.host
			for k, v := range tc.header {
				req.Header.Set(k, v)
			}
			if tc.cookie != "" {
				req.AddCookie(&http.Cookie{Name: tokenCookie, Value: tc.cookie})
			}
			w := httptest.NewRecorder()
			hs.Config.Handler.ServeHTTP(w, req)
			if w.Code != tc.want {
				t.Fatalf("status %d, want %d: %s", w.Code, tc.want, w.Body)
			}
			if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") {
				t.Errorf("CSP %q", csp)
			}
		})
	}
}

// TestAccessConfig: a non-loopback address without a token or proxy
// header is refused.
func TestAccessConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg Config
		ok  bool
	}{
		{Config{}, true},
		{Config{Addr: "[::1]:0"}, true},
		{Config{Addr: "0.0.0.0:8088"}, false},
		{Config{Addr: "0.0.0.0:8088", Token: "t"}, true},
		{Config{Addr: ":8088", ProxyHeader: "X-Forwarded-User"}, true},
		{Config{Addr: ":8088"}, false},
	} {
		if _, err := tc.cfg.withDefaults(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", tc.cfg, err)
		}
	}
}

// TestTable filters, sorts and pages the VM table.
func TestTable(t *testing.T) {
	x := NewIndex()
	fillIndex(x, 100, time.Now())
	for _, tc := range []struct {
		name      string
		q         Query
		total     int
		firstName string
		rows      int
	}{
		{"all", Query{PerPage: 10}, 100, "vm-000000", 10},
		{"page 3", Query{PerPage: 10, Page: 3}, 100, "vm-000020", 10},
		{"page past the end", Query{PerPage: 30, Page: 9}, 100, "vm-000090", 10},
		{"untrusted", Query{Status: "untrusted", PerPage: 50}, 15, "vm-000000", 15},
		{"tdx", Query{Platform: "azure-tdx", PerPage: 50}, 34, "vm-000000", 34},
		{"resource group", Query{RG: "RG-3", PerPage: 50}, 10, "vm-000003", 10},
		{"free text", Query{Text: "vm-00004", PerPage: 50}, 10, "vm-000040", 10},
		{"reason code", Query{Text: "measurement_not", PerPage: 50}, 15, "vm-000000", 15},
		{"tag", Query{Tag: "env=staging", PerPage: 50}, 25, "vm-000000", 25},
		{"tag any case, paged", Query{Tag: " Team = Platform", PerPage: 10, Page: 2}, 50, "vm-000021", 10},
		{"tag name only", Query{Tag: "team", PerPage: 10}, 100, "vm-000000", 10},
		{"tag and status", Query{Tag: "env=prod", Status: "untrusted", PerPage: 50}, 11, "vm-000007", 11},
		{"free text tag value", Query{Text: "staging", PerPage: 5, Page: 5}, 25, "vm-000080", 5},
		{"descending", Query{Sort: "-name", PerPage: 5}, 100, "vm-000099", 5},
		{"by status", Query{Sort: "status", PerPage: 5}, 100, "vm-000001", 5},
		{"by status descending", Query{Sort: "-status", PerPage: 5}, 100, "vm-000000", 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := x.Table(tc.q)
			if tb.Total != tc.total || len(tb.Rows) != tc.rows || tb.Rows[0].Name != tc.firstName {
				t.Fatalf("total %d rows %d first %q, want %d %d %q", tb.Total, len(tb.Rows), tb.Rows[0].Name, tc.total, tc.rows, tc.firstName)
			}
		})
	}
}

// TestTagFilterPaged: the fleet page filters on a tag (tag=name=value,
// any case) and pages the VMs that have it, its page links keeping the
// filter; a tag the fleet lacks matches nothing; the VM page shows the
// tags as links to the filter.
func TestTagFilterPaged(t *testing.T) {
	x := NewIndex()
	fillIndex(x, 100, time.Now())
	_, hs := testServer(t, Config{}, x)
	get := func(path string) string {
		t.Helper()
		resp, err := hs.Client().Get(hs.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		if _, err := bufio.NewReader(resp.Body).WriteTo(&b); err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b.String())
		}
		return b.String()
	}
	keyOf := func(i int) string {
		return events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg-%d/providers/Microsoft.Compute/virtualMachines/vm-%06d", i%10, i))
	}
	for _, tc := range []struct {
		name, path string
		info       string
		rows, not  []int // VMs (by number) on the page, and VMs that must not be
		links      []string
	}{
		{name: "page 2 of the staging VMs", path: "/?tag=ENV%3DStaging&per=5&page=2", info: "25 VMs match · page 2 of 5",
			rows: []int{20, 24, 28, 32, 36}, not: []int{16, 21, 40},
			links: []string{`href="/?page=3&amp;per=5&amp;tag=ENV%3DStaging"`, `href="/?per=5&amp;tag=ENV%3DStaging"`}},
		{name: "last page with another filter", path: "/?tag=team%3Dplatform&status=untrusted&per=5&page=2", info: "7 VMs match · page 2 of 2",
			rows: []int{77, 91}, not: []int{7, 70, 84}},
		{name: "no VM has the tag", path: "/?tag=owner%3Dnobody", info: "0 VMs match · page 1 of 1", not: []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := get(tc.path)
			if !strings.Contains(body, tc.info) {
				t.Errorf("want %q in the page", tc.info)
			}
			if n := strings.Count(body, `<tr id="vm-`); n != len(tc.rows) {
				t.Errorf("%d rows, want %d", n, len(tc.rows))
			}
			for _, i := range tc.rows {
				if !strings.Contains(body, `id="vm-`+keyOf(i)+`"`) {
					t.Errorf("vm-%06d missing", i)
				}
			}
			for _, i := range tc.not {
				if strings.Contains(body, `id="vm-`+keyOf(i)+`"`) {
					t.Errorf("vm-%06d listed", i)
				}
			}
			for _, l := range tc.links {
				if !strings.Contains(body, l) {
					t.Errorf("want the link %s", l)
				}
			}
		})
	}
	if body := get("/vm/" + keyOf(4)); !strings.Contains(body, `href="/?tag=env=staging">env=staging</a>`) || !strings.Contains(body, `team=payments</a>`) {
		t.Errorf("the VM page does not show the tags as filter links")
	}
}

// TestOverview counts the fleet.
func TestOverview(t *testing.T) {
	x := NewIndex()
	now := time.Now()
	fillIndex(x, 100, now)
	o := x.Overview(now, 5*time.Minute)
	got := map[string]int{}
	for _, c := range o.ByStatus {
		got[c.Label] = c.N
	}
	if o.Total != 100 || got["trusted"] != 85 || got["untrusted"] != 15 || o.Revoked != 15 || o.Attested != 100 {
		t.Fatalf("overview %+v", o)
	}
	verdicts := 0
	for _, m := range o.Minutes {
		for _, n := range m.N {
			verdicts += n
		}
	}
	if len(o.Minutes) != 60 || verdicts != 100 {
		t.Fatalf("%d minutes, %d verdicts", len(o.Minutes), verdicts)
	}
}

// TestBrokerResume: a browser that reconnects with Last-Event-ID gets what
// it missed; one too far behind (or from another run) is told to reset; a
// browser that does not read is dropped without slowing the others.
func TestBrokerResume(t *testing.T) {
	b := newBroker()
	for range 10 {
		b.publish("vm", "", []byte(`{}`))
	}
	_, missed, ok := b.subscribe(7, nil)
	if !ok || len(missed) != 3 || missed[0].id != 8 {
		t.Fatalf("resume from 7: ok %v, %d missed", ok, len(missed))
	}
	if _, _, ok := b.subscribe(99, nil); ok {
		t.Fatal("an id from the future resumed")
	}
	for range sseBacklog {
		b.publish("vm", "", []byte(`{}`))
	}
	if _, _, ok := b.subscribe(3, nil); ok {
		t.Fatal("an id older than the backlog resumed")
	}
	slow, _, _ := b.subscribe(0, nil)
	picky, _, _ := b.subscribe(0, map[string]bool{"a": true})
	for range sseSubscriber + 1 {
		b.publish("vm", "b", []byte(`{}`))
	}
	b.publish("vm", "a", []byte(`{}`))
	b.publish("overview", "", []byte(`{}`))
	if n := len(picky.ch); n != 2 {
		t.Fatalf("the browser watching VM a got %d events, want 2 (its VM's, the overview)", n)
	}
	n := 0
	for range slow.ch {
		n++
	}
	if n != sseSubscriber {
		t.Fatalf("the slow browser got %d events before being dropped", n)
	}
}

// TestFanOut: 50 browsers on the live stream each get every event.
func TestFanOut(t *testing.T) {
	const browsers, sent = 50, 20
	s, hs := testServer(t, Config{}, NewIndex())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	counts := make([]int, browsers)
	for i := range browsers {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, hs.URL+"/events", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		wg.Go(func() {
			defer resp.Body.Close()
			sc := bufio.NewScanner(resp.Body)
			for sc.Scan() {
				if strings.HasPrefix(sc.Text(), "event: vm") {
					if counts[i]++; counts[i] == sent {
						return
					}
				}
			}
		})
	}
	for s.broker.listeners() < browsers {
		select {
		case <-ctx.Done():
			t.Fatalf("%d browsers connected", s.broker.listeners())
		case <-time.After(10 * time.Millisecond):
		}
	}
	for range sent {
		s.broker.publish("vm", "", []byte(`{}`))
	}
	wg.Wait()
	for i, n := range counts {
		if n != sent {
			t.Errorf("browser %d got %d of %d events", i, n, sent)
		}
	}
}

// TestTimelineCollapses: identical consecutive events are one entry that
// counts them, so a healthy VM's timeline does not grow with time.
func TestTimelineCollapses(t *testing.T) {
	x := NewIndex()
	key := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a")
	add := func(seq uint64, status string) {
		env, err := events.New(events.TypeVerdict, "test", key, events.Verdict{VMKey: key, Status: status, IssuedAt: time.Now()})
		if err != nil {
			t.Fatal(err)
		}
		x.AddEvent(seq, time.Now(), events.VerdictSubject(key), env)
	}
	for seq := range uint64(5) {
		add(seq+1, events.VerdictAffirming)
	}
	add(6, events.VerdictContraindicated)
	add(7, events.VerdictAffirming)
	d, _ := x.Detail(key)
	var got []string
	for _, e := range d.Timeline {
		got = append(got, fmt.Sprintf("%d %s ×%d", e.Seq, e.Title, e.Repeats))
	}
	want := []string{"7 verdict: affirming ×0", "6 verdict: contraindicated ×0", "5 verdict: affirming ×4"}
	if !slices.Equal(got, want) {
		t.Fatalf("timeline %q, want %q", got, want)
	}
}

// TestLogin: the /login form sets the cookie that admits a browser; a wrong
// token does not.
func TestLogin(t *testing.T) {
	_, hs := testServer(t, Config{Addr: "0.0.0.0:8088", Token: "s3cret"}, NewIndex())
	for _, tc := range []struct {
		token  string
		cookie bool
	}{{"s3cret", true}, {"wrong", false}} {
		req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader("token="+tc.token))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		hs.Config.Handler.ServeHTTP(w, req)
		var got *http.Cookie
		for _, c := range w.Result().Cookies() {
			if c.Name == tokenCookie {
				got = c
			}
		}
		if (got != nil) != tc.cookie || w.Code != http.StatusSeeOther {
			t.Fatalf("token %q: status %d, cookie %v", tc.token, w.Code, got)
		}
		if got != nil && (!got.HttpOnly || got.SameSite != http.SameSiteStrictMode) {
			t.Errorf("cookie %+v", got)
		}
	}
}

// TestAlertsPage filters the alert feed, newest first.
func TestAlertsPage(t *testing.T) {
	x := NewIndex()
	now := time.Now()
	for i, a := range []events.Alert{
		{Severity: events.SeverityCritical, Code: "vm.untrusted", VMKey: "vm-a", Message: "first", At: now},
		{Severity: events.SeverityHigh, Code: "vm.stale", VMKey: "vm-b", Message: "second", At: now},
		{Severity: events.SeverityInfo, Code: "vm.recovered", VMKey: "vm-a", Message: "third", State: events.AlertResolved, At: now},
	} {
		x.AddAlert(uint64(i+1), a)
	}
	_, hs := testServer(t, Config{}, x)
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"", []string{"third", "second", "first"}},
		{"?severity=critical", []string{"first"}},
		{"?vm=vm-a", []string{"third", "first"}},
		{"?state=resolved", []string{"third"}},
		{"?state=firing&code=vm.stale", []string{"second"}},
	} {
		req := httptest.NewRequest(http.MethodGet, "/alerts"+tc.query, nil)
		req.Host = "127.0.0.1:8088"
		w := httptest.NewRecorder()
		hs.Config.Handler.ServeHTTP(w, req)
		body := w.Body.String()
		last := -1
		for _, m := range []string{"first", "second", "third"} {
			i := strings.Index(body, "<td>"+m)
			if slices.Contains(tc.want, m) != (i >= 0) {
				t.Errorf("%s: %q shown %v", tc.query, m, i >= 0)
			}
		}
		for _, m := range tc.want {
			i := strings.Index(body, "<td>"+m)
			if i < last {
				t.Errorf("%s: %q out of order", tc.query, m)
			}
			last = i
		}
	}
}
