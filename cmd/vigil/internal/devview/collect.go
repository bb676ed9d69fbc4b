// Package devview watches a running Vigil pipeline from the bus and shows
// it: a compact live view of the fleet (VMs known, trusted, untrusted, stale,
// revocations, audit size) with a line for every notable event, and a JSON
// summary of the run.
package devview

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Notice is a notable event worth a line of its own.
type Notice struct {
	At   time.Time
	VM   string // VM key, or "" for the fleet
	Text string
}

// Collector follows the bus and keeps the run's figures. Its methods are
// safe for concurrent use.
type Collector struct {
	mu          sync.Mutex
	since       time.Time
	known       map[string]bool
	status      map[string]events.Status
	byStatus    map[events.Status]int // how many VMs of status have each status (Counts reads it, not status)
	verdicts    map[string]int
	attested    map[string]bool
	revoked     map[string]time.Time
	latencies   []float64
	alerts      int
	alertsBySev map[events.Severity]int
	checkpoint  uint64
	names       func(vm string) string
	notices     chan Notice
}

// NewCollector returns a collector counting events stored from since on.
// names turns a VM key into a display name (nil: the key itself).
func NewCollector(since time.Time, names func(string) string) *Collector {
	if names == nil {
		names = func(vm string) string { return vm }
	}
	return &Collector{
		since: since, known: map[string]bool{}, status: map[string]events.Status{}, byStatus: map[events.Status]int{},
		verdicts: map[string]int{}, attested: map[string]bool{}, revoked: map[string]time.Time{},
		alertsBySev: map[events.Severity]int{}, names: names, notices: make(chan Notice, 1024),
	}
}

// Notices delivers notable events; a slow reader loses notices, never
// figures.
func (c *Collector) Notices() <-chan Notice { return c.notices }

func (c *Collector) notice(vm, format string, args ...any) {
	select {
	case c.notices <- Notice{At: time.Now(), VM: vm, Text: fmt.Sprintf(format, args...)}:
	default:
	}
}

// Run follows VIGIL_EVENTS, VIGIL_ALERTS and VIGIL_CHECKPOINTS until ctx ends.
func (c *Collector) Run(ctx context.Context, js jetstream.JetStream) error {
	type feed struct {
		stream string
		handle func(jetstream.Msg)
	}
	feeds := []feed{
		{events.StreamEvents, c.onEvent},
		{events.StreamAlerts, c.onAlert},
		{events.StreamCheckpoints, c.onCheckpoint},
	}
	errs := make(chan error, len(feeds))
	for _, f := range feeds {
		cons, err := js.OrderedConsumer(ctx, f.stream, jetstream.OrderedConsumerConfig{
			DeliverPolicy: jetstream.DeliverByStartTimePolicy, OptStartTime: &c.since,
		})
		if err != nil {
			return fmt.Errorf("devview: follow %s: %w", f.stream, err)
		}
		go func() {
			cc, err := cons.Consume(f.handle)
			if err != nil {
				errs <- fmt.Errorf("devview: follow %s: %w", f.stream, err)
				return
			}
			<-ctx.Done()
			cc.Stop()
			errs <- nil
		}()
	}
	var first error
	for range feeds {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

func (c *Collector) onEvent(m jetstream.Msg) {
	env, err := events.Parse(m.Data())
	if err != nil {
		return
	}
	vm := events.VMFromSubject(m.Subject())
	c.mu.Lock()
	defer c.mu.Unlock()
	if vm != "" && !c.known[vm] {
		c.known[vm] = true
		if _, ok := c.status[vm]; !ok {
			c.setStatus(vm, events.StatusPending)
		}
	}
	name := c.names(vm)
	switch env.Type {
	case events.TypeVerdict:
		var v events.Verdict
		if env.Decode(events.TypeVerdict, &v) == nil {
			c.verdicts[v.Status]++
			c.attested[vm] = true
		}
	case events.TypeState:
		var s events.State
		if env.Decode(events.TypeState, &s) != nil {
			return
		}
		c.setStatus(vm, s.To)
		switch {
		case s.To == events.StatusTrusted && (s.From == events.StatusPending || s.From == ""):
			// The common case: not worth a line per VM.
		default:
			c.notice(vm, "%s  %s → %s%s", name, orPending(s.From), s.To, reasonSuffix(s.Reasons))
		}
	case events.TypeKey:
		var k events.Key
		if env.Decode(events.TypeKey, &k) != nil {
			return
		}
		if k.Action == events.KeyRevoked {
			if _, dup := c.revoked[vm]; !dup {
				c.revoked[vm] = k.At
				if k.LatencyMS > 0 {
					c.latencies = append(c.latencies, k.LatencyMS)
				}
			}
			if k.Backend == "nats" {
				c.notice(vm, "%s  agent's bus credentials revoked (%s) %s", name, k.Reason, latency(k.LatencyMS))
			} else {
				c.notice(vm, "%s  key %q revoked on %s (%s) %s", name, k.KeyName, orDefault(k.Backend, "local"), k.Reason, latency(k.LatencyMS))
			}
		} else if k.Action == events.KeyRestored {
			delete(c.revoked, vm)
			c.notice(vm, "%s  key %q restored by %s", name, k.KeyName, k.Actor)
		}
	}
}

func (c *Collector) onAlert(m jetstream.Msg) {
	env, err := events.Parse(m.Data())
	if err != nil {
		return
	}
	var a events.Alert
	if env.Decode(events.TypeAlert, &a) != nil {
		return
	}
	c.mu.Lock()
	c.alerts++
	c.alertsBySev[a.Severity]++
	msg := a.Message
	if a.ResourceID != "" {
		msg = strings.ReplaceAll(msg, a.ResourceID, c.names(a.ResourceID))
	}
	msg = strings.ReplaceAll(msg, a.VMKey, c.names(a.VMKey))
	c.mu.Unlock()
	switch {
	case a.Resolved():
		c.notice(a.VMKey, "RESOLVED %s: %s", a.Code, msg)
	case a.Severity == events.SeverityCritical || a.Severity == events.SeverityHigh || a.Severity == events.SeverityWarning:
		c.notice(a.VMKey, "ALERT %s %s: %s", a.Severity, a.Code, msg)
	}
}

func (c *Collector) onCheckpoint(m jetstream.Msg) {
	// A C2SP checkpoint: origin line, tree size line, root hash line.
	lines := strings.SplitN(string(m.Data()), "\n", 3)
	if len(lines) < 2 {
		return
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil {
		return
	}
	c.mu.Lock()
	if size > c.checkpoint {
		c.checkpoint = size
	}
	c.mu.Unlock()
}

// Counts is a snapshot of the live figures.
type Counts struct {
	Known, Pending, Trusted, Warning, Untrusted, Unreachable, Stale, Suspended, Retired int
	Revoked, Alerts                                                                     int
	AuditEntries                                                                        uint64
}

// Counts returns the current figures.
func (c *Collector) Counts() Counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	b := c.byStatus
	return Counts{Known: len(c.known), Revoked: len(c.revoked), Alerts: c.alerts, AuditEntries: c.checkpoint,
		Pending: b[events.StatusPending], Trusted: b[events.StatusTrusted], Warning: b[events.StatusWarning],
		Untrusted: b[events.StatusUntrusted], Unreachable: b[events.StatusUnreachable], Stale: b[events.StatusStale],
		Suspended: b[events.StatusSuspended], Retired: b[events.StatusRetired]}
}

// setStatus records vm's status and keeps the count by status; c.mu is held.
func (c *Collector) setStatus(vm string, s events.Status) {
	if old, ok := c.status[vm]; ok {
		c.byStatus[old]--
	}
	c.status[vm] = s
	c.byStatus[s]++
}

// Status returns a VM's last known status ("" when unknown).
func (c *Collector) Status(vm string) events.Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.status[vm]
}

// Revoked reports whether a VM's keys were revoked in this run (and not
// restored since).
func (c *Collector) Revoked(vm string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.revoked[vm]
	return ok
}

// Summary is the JSON summary of a run.
type Summary struct {
	VMs                 int               `json:"vms"`
	Attested            int               `json:"attested"`
	Verdicts            map[string]int    `json:"verdicts"`
	Statuses            map[string]int    `json:"statuses"`
	Revoked             []string          `json:"revoked"`
	RevocationLatencyMS Latency           `json:"revocation_latency_ms"`
	Audit               Audit             `json:"audit"`
	Alerts              int               `json:"alerts"`
	AlertsBySeverity    map[string]int    `json:"alerts_by_severity"`
	Tampered            map[string]string `json:"tampered"` // VM key -> fault
	Deleted             []string          `json:"deleted"`  // deleted by the scenario: retired, keys revoked
	// Drifted are the healthy VMs whose configuration the scenario changed
	// in ARM and fixed again: a finding alert fired and resolved; they stay
	// trusted (a finding does not change a VM's status) and keep their keys.
	Drifted            []string `json:"drifted"`
	HealthyRevoked     []string `json:"healthy_revoked"`
	DeletedNotRevoked  []string `json:"deleted_not_revoked"`
	TamperedNotRevoked []string `json:"tampered_not_revoked"`
	HealthyNotTrusted  []string `json:"healthy_not_trusted"`
	DataDir            string   `json:"data_dir"`
	DurationSeconds    float64  `json:"duration_s"`
}

// Latency holds percentiles in milliseconds.
type Latency struct {
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	N   int     `json:"n"`
}

// Audit describes the audit log at the end of the run.
type Audit struct {
	Entries        uint64 `json:"entries"`
	CheckpointSize uint64 `json:"checkpoint_size"`
	Log            string `json:"log"`
	PublicKey      string `json:"public_key"`
}

// ErrOutcome is wrapped by Summary.Check when the run's outcome is wrong.
var ErrOutcome = errors.New("unexpected outcome")

// Check reports whether the run ended as a healthy pipeline should: every
// healthy VM trusted, every tampered VM revoked, no healthy VM revoked.
func (s Summary) Check() error {
	var problems []string
	if len(s.HealthyNotTrusted) > 0 {
		problems = append(problems, fmt.Sprintf("%d healthy VMs not trusted", len(s.HealthyNotTrusted)))
	}
	if len(s.TamperedNotRevoked) > 0 {
		problems = append(problems, fmt.Sprintf("%d tampered VMs not revoked", len(s.TamperedNotRevoked)))
	}
	if len(s.HealthyRevoked) > 0 {
		problems = append(problems, fmt.Sprintf("%d healthy VMs revoked", len(s.HealthyRevoked)))
	}
	if len(s.DeletedNotRevoked) > 0 {
		problems = append(problems, fmt.Sprintf("%d deleted VMs not revoked", len(s.DeletedNotRevoked)))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrOutcome, strings.Join(problems, ", "))
	}
	return nil
}

// Summarize builds the run's summary. fleet lists the fleet's VM keys,
// tampered maps the spoiled ones to their fault and deleted names the VMs
// the run deleted.
func (c *Collector) Summarize(fleet []string, tampered map[string]string, deleted map[string]bool, started time.Time) Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Summary{
		VMs: len(fleet), Verdicts: map[string]int{}, Statuses: map[string]int{}, Revoked: []string{},
		Alerts: c.alerts, AlertsBySeverity: map[string]int{}, Tampered: tampered,
		HealthyRevoked: []string{}, TamperedNotRevoked: []string{}, HealthyNotTrusted: []string{},
		Deleted: []string{}, DeletedNotRevoked: []string{}, Drifted: []string{},
		Audit:           Audit{Entries: c.checkpoint, CheckpointSize: c.checkpoint},
		DurationSeconds: time.Since(started).Seconds(),
	}
	if s.Tampered == nil {
		s.Tampered = map[string]string{}
	}
	for k, v := range c.verdicts {
		s.Verdicts[k] = v
	}
	for sev, n := range c.alertsBySev {
		s.AlertsBySeverity[string(sev)] = n
	}
	for _, vm := range fleet {
		if c.attested[vm] {
			s.Attested++
		}
		st := c.status[vm]
		if st == "" {
			st = events.StatusPending
		}
		s.Statuses[string(st)]++
		_, revoked := c.revoked[vm]
		_, bad := tampered[vm]
		switch {
		case deleted[vm]:
			s.Deleted = append(s.Deleted, vm)
			if !revoked {
				s.DeletedNotRevoked = append(s.DeletedNotRevoked, vm)
			}
		case bad && !revoked:
			s.TamperedNotRevoked = append(s.TamperedNotRevoked, vm)
		case !bad && revoked:
			s.HealthyRevoked = append(s.HealthyRevoked, vm)
		case !bad && st != events.StatusTrusted:
			s.HealthyNotTrusted = append(s.HealthyNotTrusted, vm)
		}
	}
	for vm := range c.revoked {
		s.Revoked = append(s.Revoked, vm)
	}
	sort.Strings(s.Revoked)
	s.RevocationLatencyMS = percentiles(c.latencies)
	return s
}

func percentiles(xs []float64) Latency {
	if len(xs) == 0 {
		return Latency{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(q float64) float64 {
		i := int(q*float64(len(s)-1) + 0.5)
		return s[min(i, len(s)-1)]
	}
	return Latency{P50: round(at(0.50)), P99: round(at(0.99)), N: len(s)}
}

func round(v float64) float64 { return float64(int64(v*100+0.5)) / 100 }

func orPending(s events.Status) events.Status {
	if s == "" {
		return events.StatusPending
	}
	return s
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func reasonSuffix(rs []events.Reason) string {
	if len(rs) == 0 {
		return ""
	}
	codes := make([]string, 0, len(rs))
	for _, r := range rs {
		codes = append(codes, r.Code)
	}
	return "  (" + strings.Join(codes, ", ") + ")"
}

func latency(ms float64) string {
	if ms <= 0 {
		return ""
	}
	return fmt.Sprintf("in %.1f ms", ms)
}

// Note adds a notice of the caller's own (for example a fault the scenario
// injected).
func (c *Collector) Note(vm, text string) { c.notice(vm, "%s", text) }
