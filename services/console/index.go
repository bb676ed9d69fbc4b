package console

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// Statuses is every VM status in the order the console lists them.
var statuses = []events.Status{
	events.StatusTrusted, events.StatusWarning, events.StatusUntrusted, events.StatusUnreachable,
	events.StatusStale, events.StatusSuspended, events.StatusRetired, events.StatusPending,
}

// verdictStatuses are the verdict statuses the verdicts chart stacks.
var verdictStatuses = []string{events.VerdictAffirming, events.VerdictWarning, events.VerdictContraindicated, events.VerdictNone}

// Bounds of what the index keeps.
const (
	maxTimeline  = 200  // timeline entries per VM, the newest
	maxAlerts    = 2000 // alerts, the newest
	chartMinutes = 60
)

// vmState is what the index knows of one VM. It is only read or written
// with Index.mu held.
type vmState struct {
	key       string
	inv       events.VM
	hasInv    bool
	st        events.VMStatus
	hasStatus bool
	verdict   *events.Verdict
	grants    map[string]grants.Grant // by KV key
	timeline  []TimelineEntry
	lowerName string // the name (else the key) in lower case: the table's order
	lowerRG   string
	tags      map[string]string // Azure tags, names and values in lower case: the tag filter
	haystack  string            // what free text searches: name, resource ID, key, tags (name=value)
	codes     string            // and reason codes (setCodes)
	revoked   int               // grants revoked
}

// TimelineEntry is one event of a VM's history on VIGIL_EVENTS.
type TimelineEntry struct {
	Seq     uint64    // VIGIL_EVENTS stream sequence
	At      time.Time // when the stream stored it
	EventID string
	Kind    string // lifecycle, config, verdict, state, key
	Title   string
	Reasons []Explained
	// Repeats counts the identical events before this one that it stands
	// for (a healthy VM's affirming verdicts): the timeline grows with
	// changes, not with time.
	Repeats int
}

func (e TimelineEntry) same(o TimelineEntry) bool {
	if e.Kind != o.Kind || e.Title != o.Title || len(e.Reasons) != len(o.Reasons) {
		return false
	}
	for i := range e.Reasons {
		if e.Reasons[i] != o.Reasons[i] {
			return false
		}
	}
	return true
}

// Explained is a reason code with its explanation in words.
type Explained struct {
	Code, Words string
}

// Alert is one alert of the feed.
type Alert struct {
	Seq uint64
	events.Alert
}

// Index is the console's in-memory picture of the fleet, fed by the KV
// watches and the streams (feed.go) and read by the pages. Its methods are
// safe for concurrent use.
type Index struct {
	mu       sync.RWMutex
	vms      map[string]*vmState
	all      []*vmState // every VM, for iteration
	byName   []*vmState // every VM by name, rebuilt when resorted is set
	resort   bool
	minutes  [chartMinutes]minuteCount
	alerts   []Alert // ring, oldest first once full
	alertPos int
	alertSeq uint64
	changed  func(vm string) // called (with mu held) when a VM's row changed
	alerted  func(Alert)     // called (with mu held) for each new alert
}

// minuteCount counts verdicts by status in one minute.
type minuteCount struct {
	minute int64 // Unix minute
	n      [4]int
}

// NewIndex returns an empty index.
func NewIndex() *Index {
	return &Index{vms: map[string]*vmState{}, changed: func(string) {}, alerted: func(Alert) {}}
}

// notify sets who hears of changed rows and new alerts; call it before
// feeding the index.
func (x *Index) notify(changed func(vm string), alerted func(Alert)) {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.changed, x.alerted = changed, alerted
}

func (x *Index) vm(key string) *vmState {
	v, ok := x.vms[key]
	if !ok {
		v = &vmState{key: key, lowerName: key, grants: map[string]grants.Grant{}}
		x.vms[key] = v
		x.all = append(x.all, v)
		x.resort = true
	}
	return v
}

// PutVM records a vigil-vms record.
func (x *Index) PutVM(r events.VM) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.vm(r.VMKey)
	v.inv, v.hasInv = r, true
	name := strings.ToLower(r.Name)
	if name == "" {
		name = r.VMKey
	}
	if name != v.lowerName {
		v.lowerName, x.resort = name, true
	}
	v.lowerRG = strings.ToLower(r.ResourceGroup)
	v.tags = nil
	var hay strings.Builder
	hay.WriteString(name + "\x00" + strings.ToLower(r.ResourceID) + "\x00" + r.VMKey)
	if len(r.Tags) > 0 {
		v.tags = make(map[string]string, len(r.Tags))
		for _, k := range slices.Sorted(maps.Keys(r.Tags)) {
			lk, lv := strings.ToLower(k), strings.ToLower(r.Tags[k])
			v.tags[lk] = lv
			hay.WriteString("\x00" + lk + "=" + lv)
		}
	}
	v.haystack = hay.String()
	x.changed(r.VMKey)
}

// PutStatus records a vigil-status record.
func (x *Index) PutStatus(s events.VMStatus) {
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.vm(s.VMKey)
	v.st, v.hasStatus = s, true
	v.setCodes()
	x.changed(s.VMKey)
}

// PutGrant records a vigil-grants record; a deleted one is removed.
func (x *Index) PutGrant(kvKey string, g grants.Grant, deleted bool) {
	vm, _, _ := strings.Cut(kvKey, ".")
	if !events.ValidVMKey(vm) {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.vm(vm)
	if deleted {
		delete(v.grants, kvKey)
	} else {
		v.grants[kvKey] = g
	}
	v.revoked = 0
	for _, g := range v.grants {
		if g.State == grants.Revoked {
			v.revoked++
		}
	}
	x.changed(vm)
}

// AddEvent records an event of VIGIL_EVENTS stored at seq and at: the VM's
// timeline, its last verdict, and the verdicts chart.
func (x *Index) AddEvent(seq uint64, at time.Time, subject string, env events.Envelope) {
	vm := events.VMFromSubject(subject)
	if vm == "" {
		return
	}
	entry := TimelineEntry{Seq: seq, At: at, EventID: env.ID}
	var verdict *events.Verdict
	entry.Kind, entry.Title, entry.Reasons, verdict = describeEvent(env)
	if entry.Kind == "" {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	v := x.vm(vm)
	if n := len(v.timeline); n > 0 && v.timeline[n-1].same(entry) {
		entry.Repeats = v.timeline[n-1].Repeats + 1
		v.timeline = v.timeline[:n-1]
	}
	if len(v.timeline) == maxTimeline {
		copy(v.timeline, v.timeline[1:])
		v.timeline = v.timeline[:maxTimeline-1]
	}
	v.timeline = append(v.timeline, entry)
	if verdict != nil {
		if v.verdict == nil || !verdict.IssuedAt.Before(v.verdict.IssuedAt) {
			v.verdict = verdict
			v.setCodes()
		}
		x.countVerdict(verdict.IssuedAt, verdict.Status)
		x.changed(vm)
	}
}

func (x *Index) countVerdict(at time.Time, status string) {
	i := slices.Index(verdictStatuses, status)
	if i < 0 {
		i = len(verdictStatuses) - 1
	}
	m := at.Unix() / 60
	b := &x.minutes[m%chartMinutes]
	if b.minute != m {
		if b.minute > m {
			return // older than the chart's hour
		}
		*b = minuteCount{minute: m}
	}
	b.n[i]++
}

// AddAlert records an alert of VIGIL_ALERTS stored at seq.
func (x *Index) AddAlert(seq uint64, a events.Alert) {
	x.mu.Lock()
	defer x.mu.Unlock()
	al := Alert{Seq: seq, Alert: a}
	if len(x.alerts) < maxAlerts {
		x.alerts = append(x.alerts, al)
	} else {
		x.alerts[x.alertPos] = al
		x.alertPos = (x.alertPos + 1) % maxAlerts
	}
	x.alertSeq = seq
	x.alerted(al)
}

// Len is the number of VMs known.
func (x *Index) Len() int {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return len(x.vms)
}

// Row is one VM as the table shows it.
type Row struct {
	Key           string
	Name          string
	ResourceGroup string
	Platform      string
	Status        events.Status
	Since         time.Time
	LastGood      time.Time
	LastVerdictAt time.Time
	Reasons       []string
	TCB           string
	GrantsActive  int
	GrantsRevoked int
	GrantsOther   int
	Findings      int
	Deleted       bool
}

func (v *vmState) status() events.Status {
	if v.hasStatus && v.st.Status != "" {
		return v.st.Status
	}
	if v.inv.Deleted {
		return events.StatusRetired
	}
	return events.StatusPending
}

func (v *vmState) platform() string {
	if v.inv.Platform != "" {
		return v.inv.Platform
	}
	if v.st.Platform != "" {
		return v.st.Platform
	}
	if v.verdict != nil {
		return v.verdict.Platform
	}
	return ""
}

func (v *vmState) row() Row {
	r := Row{
		Key: v.key, Name: v.inv.Name, ResourceGroup: v.inv.ResourceGroup, Platform: v.platform(),
		Status: v.status(), Since: v.st.Since, LastGood: v.st.LastGoodAt, LastVerdictAt: v.st.LastVerdictAt,
		Findings: len(v.inv.Findings), Deleted: v.inv.Deleted,
	}
	if r.Name == "" {
		r.Name = v.key
	}
	reasons := v.st.Reasons
	if v.verdict != nil && len(v.verdict.Reasons) > 0 {
		reasons = v.verdict.Reasons
	}
	for _, rs := range reasons {
		r.Reasons = append(r.Reasons, rs.Code)
	}
	if v.verdict != nil && v.verdict.TCB != nil {
		r.TCB = tcbString(v.verdict.TCB)
	}
	for _, g := range v.grants {
		switch g.State {
		case grants.Active:
			r.GrantsActive++
		case grants.Revoked:
			r.GrantsRevoked++
		default:
			r.GrantsOther++
		}
	}
	return r
}

func tcbString(t *events.TCB) string {
	if t.TEETCBSVN != "" {
		s := "TDX svn " + t.TEETCBSVN
		if t.TCBStatus != "" {
			s += " (" + t.TCBStatus + ")"
		}
		return s
	}
	if t.Product == "" && t.SNP == 0 && t.Microcode == 0 {
		return ""
	}
	return t.Product + " bl" + itoa(int(t.BootLoader)) + " tee" + itoa(int(t.TEE)) + " snp" + itoa(int(t.SNP)) + " uc" + itoa(int(t.Microcode))
}

// Query selects and orders the VM table.
type Query struct {
	Status   string // a status, or ""
	Platform string
	RG       string // resource group, case-insensitive
	Tag      string // an Azure tag, "name=value" or "name" (has the tag), case-insensitive
	Text     string // free text: name, resource ID, VM key, reason code, tag (name=value)
	Sort     string // name, rg, platform, status, attested, since; "-" prefix: descending
	Page     int    // 1-based
	PerPage  int

	perSet bool // PerPage was asked for (kept in the page links)
}

// Table is one page of the VM table.
type Table struct {
	Rows               []Row
	Total, Page, Pages int
}

// Table returns the page of the table that q selects.
func (x *Index) Table(q Query) Table {
	text := strings.ToLower(strings.TrimSpace(q.Text))
	rg := strings.ToLower(strings.TrimSpace(q.RG))
	tagName, tagValue, tagHasValue := strings.Cut(strings.ToLower(strings.TrimSpace(q.Tag)), "=")
	tagName, tagValue = strings.TrimSpace(tagName), strings.TrimSpace(tagValue)
	x.sortByName()
	x.mu.RLock()
	matched := make([]*vmState, 0, len(x.byName))
	for _, v := range x.byName {
		if q.Status != "" && string(v.status()) != q.Status {
			continue
		}
		if q.Platform != "" && v.platform() != q.Platform {
			continue
		}
		if rg != "" && v.lowerRG != rg {
			continue
		}
		if tagName != "" {
			if tv, ok := v.tags[tagName]; !ok || (tagHasValue && tv != tagValue) {
				continue
			}
		}
		if text != "" && !v.matches(text) {
			continue
		}
		matched = append(matched, v)
	}
	desc := strings.HasPrefix(q.Sort, "-")
	key := strings.TrimPrefix(q.Sort, "-")
	switch {
	case key == "" || key == "name":
		// byName's order already.
		if desc {
			slices.Reverse(matched)
		}
	case key == "rg":
		sortBy(matched, desc, func(v *vmState) string { return v.lowerRG })
	case key == "platform":
		sortBy(matched, desc, (*vmState).platform)
	case key == "status":
		sortBy(matched, desc, func(v *vmState) int { return statusRank(v.status()) })
	case key == "attested":
		sortBy(matched, desc, func(v *vmState) int64 { return v.st.LastGoodAt.UnixNano() })
	case key == "since":
		sortBy(matched, desc, func(v *vmState) int64 { return v.st.Since.UnixNano() })
	}
	t := Table{Total: len(matched), Page: max(q.Page, 1)}
	per := q.PerPage
	if per <= 0 {
		per = 50
	}
	t.Pages = max((t.Total+per-1)/per, 1)
	t.Page = min(t.Page, t.Pages)
	lo := (t.Page - 1) * per
	hi := min(lo+per, t.Total)
	for _, v := range matched[lo:hi] {
		t.Rows = append(t.Rows, v.row())
	}
	x.mu.RUnlock()
	return t
}

// sortByName rebuilds the by-name order when VMs or names changed.
func (x *Index) sortByName() {
	x.mu.RLock()
	stale := x.resort
	x.mu.RUnlock()
	if !stale {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	if !x.resort {
		return
	}
	x.byName = append(x.byName[:0], x.all...)
	slices.SortFunc(x.byName, func(a, b *vmState) int {
		if c := cmp.Compare(a.lowerName, b.lowerName); c != 0 {
			return c
		}
		return cmp.Compare(a.key, b.key)
	})
	x.resort = false
}

func (v *vmState) matches(text string) bool {
	return strings.Contains(v.haystack, text) || strings.Contains(v.key, text) || strings.Contains(v.codes, text)
}

// setCodes notes the reason codes of the status and the last verdict, for
// free-text search.
func (v *vmState) setCodes() {
	var b strings.Builder
	for _, r := range v.st.Reasons {
		b.WriteString(r.Code)
		b.WriteByte(0)
	}
	if v.verdict != nil {
		for _, r := range v.verdict.Reasons {
			b.WriteString(r.Code)
			b.WriteByte(0)
		}
	}
	v.codes = b.String()
}

// sortBy sorts vms (in name order) by key, ties staying in name order.
func sortBy[K cmp.Ordered](vms []*vmState, desc bool, key func(*vmState) K) {
	type keyed struct {
		k K
		i int
	}
	ks := make([]keyed, len(vms))
	for i, v := range vms {
		ks[i] = keyed{key(v), i}
	}
	slices.SortFunc(ks, func(a, b keyed) int {
		c := cmp.Compare(a.k, b.k)
		if desc {
			c = -c
		}
		if c == 0 {
			c = cmp.Compare(a.i, b.i)
		}
		return c
	})
	sorted := make([]*vmState, len(vms))
	for i, k := range ks {
		sorted[i] = vms[k.i]
	}
	copy(vms, sorted)
}

func statusRank(s events.Status) int {
	for i, x := range statuses {
		if x == s {
			return i
		}
	}
	return len(statuses)
}

// Row returns one VM's row.
func (x *Index) Row(key string) (Row, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	v, ok := x.vms[key]
	if !ok {
		return Row{}, false
	}
	return v.row(), true
}

// Detail is everything the VM page shows.
type Detail struct {
	Row
	VM       events.VM
	Status   events.VMStatus
	Verdict  *events.Verdict
	Grants   []grants.Grant
	Timeline []TimelineEntry // newest first
}

// Detail returns one VM's page.
func (x *Index) Detail(key string) (Detail, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	v, ok := x.vms[key]
	if !ok {
		return Detail{}, false
	}
	d := Detail{Row: v.row(), VM: v.inv, Status: v.st, Verdict: v.verdict}
	for _, g := range v.grants {
		d.Grants = append(d.Grants, g)
	}
	slices.SortFunc(d.Grants, func(a, b grants.Grant) int { return cmp.Compare(a.Key(), b.Key()) })
	d.Timeline = make([]TimelineEntry, len(v.timeline))
	for i, e := range v.timeline {
		d.Timeline[len(v.timeline)-1-i] = e
	}
	return d, true
}

// Event returns the timeline entry of a VM's event at stream sequence seq.
func (x *Index) Event(key string, seq uint64) (TimelineEntry, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	v, ok := x.vms[key]
	if !ok {
		return TimelineEntry{}, false
	}
	for _, e := range v.timeline {
		if e.Seq == seq {
			return e, true
		}
	}
	return TimelineEntry{}, false
}

// Overview is the fleet overview's figures.
type Overview struct {
	Total      int
	ByStatus   []Count // every status, in order
	ByPlatform []Count
	Attested   int // VMs with a verdict within the interval
	Interval   time.Duration
	Stale      int
	Revoked    int     // VMs with a revoked grant
	Findings   []Count // open configuration findings by rule
	Minutes    []MinuteCounts
	SinceGood  []Count // VMs by time since their last successful attestation
}

// Count is a labelled count.
type Count struct {
	Label string
	N     int
}

// MinuteCounts are one minute's verdicts by status (verdictStatuses).
type MinuteCounts struct {
	Start time.Time
	N     [4]int
}

// sinceBuckets are the bins of the time-since-last-good chart.
var sinceBuckets = []struct {
	label string
	upTo  time.Duration
}{
	{"< 1m", time.Minute}, {"1–5m", 5 * time.Minute}, {"5–15m", 15 * time.Minute},
	{"15–60m", time.Hour}, {"1–6h", 6 * time.Hour}, {"> 6h", 1 << 62},
}

// Overview computes the overview at now; interval is what "attested
// recently" means.
func (x *Index) Overview(now time.Time, interval time.Duration) Overview {
	o := Overview{Interval: interval}
	byStatus := make([]int, len(statuses))
	platforms := map[string]int{}
	findings := map[string]int{}
	since := make([]int, len(sinceBuckets)+1) // last: never
	x.mu.RLock()
	o.Total = len(x.vms)
	for _, v := range x.all {
		s := v.status()
		if i := statusRank(s); i < len(statuses) {
			byStatus[i]++
		}
		if s == events.StatusStale {
			o.Stale++
		}
		p := v.platform()
		if p == "" {
			p = "unknown"
		}
		platforms[p]++
		if !v.st.LastVerdictAt.IsZero() && now.Sub(v.st.LastVerdictAt) <= interval {
			o.Attested++
		}
		if v.revoked > 0 {
			o.Revoked++
		}
		if !v.inv.Deleted {
			for _, f := range v.inv.Findings {
				findings[f.Code]++
			}
		}
		if v.st.LastGoodAt.IsZero() {
			since[len(sinceBuckets)]++
		} else {
			age := now.Sub(v.st.LastGoodAt)
			for i, b := range sinceBuckets {
				if age < b.upTo {
					since[i]++
					break
				}
			}
		}
	}
	nowMin := now.Unix() / 60
	for m := nowMin - chartMinutes + 1; m <= nowMin; m++ {
		mc := MinuteCounts{Start: time.Unix(m*60, 0)}
		if b := x.minutes[m%chartMinutes]; b.minute == m {
			mc.N = b.n
		}
		o.Minutes = append(o.Minutes, mc)
	}
	x.mu.RUnlock()
	for i, s := range statuses {
		o.ByStatus = append(o.ByStatus, Count{string(s), byStatus[i]})
	}
	o.ByPlatform = sortedCounts(platforms)
	o.Findings = sortedCounts(findings)
	for i, b := range sinceBuckets {
		o.SinceGood = append(o.SinceGood, Count{b.label, since[i]})
	}
	o.SinceGood = append(o.SinceGood, Count{"never", since[len(sinceBuckets)]})
	return o
}

func sortedCounts(m map[string]int) []Count {
	cs := make([]Count, 0, len(m))
	for k, n := range m {
		cs = append(cs, Count{k, n})
	}
	slices.SortFunc(cs, func(a, b Count) int {
		if c := cmp.Compare(b.N, a.N); c != 0 {
			return c
		}
		return cmp.Compare(a.Label, b.Label)
	})
	return cs
}

// Platforms lists the platforms seen, for the table's filter.
func (x *Index) Platforms() []string {
	x.mu.RLock()
	seen := map[string]bool{}
	for _, v := range x.all {
		if p := v.platform(); p != "" {
			seen[p] = true
		}
	}
	x.mu.RUnlock()
	ps := make([]string, 0, len(seen))
	for p := range seen {
		ps = append(ps, p)
	}
	slices.Sort(ps)
	return ps
}

// AlertQuery filters the alert feed.
type AlertQuery struct {
	Severity string
	Code     string
	VM       string
	State    string // firing or resolved; "" both
	Limit    int
}

// Match reports whether a passes the filter.
func (q AlertQuery) Match(a Alert) bool {
	return (q.Severity == "" || string(a.Severity) == q.Severity) &&
		(q.Code == "" || a.Code == q.Code) &&
		(q.VM == "" || a.VMKey == q.VM) &&
		(q.State == "" || alertState(a.Alert) == q.State)
}

// alertState is an alert's state, firing when it has none.
func alertState(a events.Alert) string {
	if a.State == "" {
		return string(events.AlertFiring)
	}
	return string(a.State)
}

// Alerts returns the newest alerts that q selects, newest first.
func (x *Index) Alerts(q AlertQuery) []Alert {
	limit := q.Limit
	if limit <= 0 {
		limit = 200
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	var out []Alert
	n := len(x.alerts)
	for i := 0; i < n && len(out) < limit; i++ {
		// Newest first: the one before alertPos, going back.
		a := x.alerts[(x.alertPos-1-i+2*n)%n]
		if q.Match(a) {
			out = append(out, a)
		}
	}
	return out
}
