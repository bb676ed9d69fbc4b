package attestworker

import (
	"fmt"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
)

func TestApplyAttempt(t *testing.T) {
	tm := Timing{Interval: time.Minute, Jitter: 0.1, Grace: 30 * time.Second, Onboarding: 5 * time.Minute, RetryBase: time.Second, RetryMax: 8 * time.Second}
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	vm := "aldtmn2tg7p3rh5huznzu5dk3n"
	good := &events.Verdict{ID: "v", Status: events.VerdictAffirming, Platform: "azure-sev-snp"}
	warn := &events.Verdict{ID: "v", Status: events.VerdictWarning}
	bad := &events.Verdict{ID: "v", Status: events.VerdictContraindicated, Reasons: []events.Reason{{Code: "policy.debug_enabled"}}}
	none := &events.Verdict{ID: "v", Status: events.VerdictNone, Reasons: []events.Reason{{Code: "collateral.unavailable"}}}
	noAnswer := events.Reason{Code: "agent.unreachable"}
	trusted := events.VMStatus{VMKey: vm, Status: events.StatusTrusted, Since: t0.Add(-time.Hour), LastGoodAt: t0.Add(-time.Minute), NextDueAt: t0}

	tests := []struct {
		name     string
		prev     events.VMStatus
		exists   bool
		a        attempt
		want     events.Status
		changed  bool
		retry    bool
		overdue  time.Time // want OverdueSince
		failures int
	}{
		{"first good verdict", events.VMStatus{}, false, attempt{Verdict: good, At: t0}, events.StatusTrusted, true, false, time.Time{}, 0},
		{"warning verdict", events.VMStatus{}, false, attempt{Verdict: warn, At: t0}, events.StatusWarning, true, false, time.Time{}, 0},
		{"contraindicated", trusted, true, attempt{Verdict: bad, At: t0}, events.StatusUntrusted, true, false, time.Time{}, 0},
		{"good again", trusted, true, attempt{Verdict: good, At: t0}, events.StatusTrusted, false, false, time.Time{}, 0},
		{"no answer within grace", trusted, true, attempt{Failure: noAnswer, DueAt: t0, At: t0.Add(10 * time.Second)}, events.StatusUnreachable, true, true, t0, 1},
		{"no answer after grace", events.VMStatus{VMKey: vm, Status: events.StatusUnreachable, OverdueSince: t0, ConsecutiveFailures: 3, LastGoodAt: t0.Add(-time.Minute)}, true,
			attempt{Failure: noAnswer, DueAt: t0.Add(20 * time.Second), At: t0.Add(31 * time.Second)}, events.StatusStale, true, true, t0, 4},
		{"never attested: no answer after grace, within the onboarding limit", events.VMStatus{VMKey: vm, Status: events.StatusUnreachable, OverdueSince: t0, ConsecutiveFailures: 3}, true,
			attempt{Failure: noAnswer, DueAt: t0.Add(20 * time.Second), At: t0.Add(4 * time.Minute)}, events.StatusUnreachable, false, true, t0, 4},
		{"never attested: no answer after the onboarding limit", events.VMStatus{VMKey: vm, Status: events.StatusUnreachable, OverdueSince: t0, ConsecutiveFailures: 9}, true,
			attempt{Failure: noAnswer, DueAt: t0.Add(4 * time.Minute), At: t0.Add(5*time.Minute + time.Second)}, events.StatusStale, true, true, t0, 10},
		{"verdict none counts as no evidence", trusted, true, attempt{Verdict: none, DueAt: t0, At: t0}, events.StatusUnreachable, true, true, t0, 1},
		{"untrusted stays untrusted when silent", events.VMStatus{VMKey: vm, Status: events.StatusUntrusted, Reasons: bad.Reasons}, true,
			attempt{Failure: noAnswer, DueAt: t0, At: t0.Add(time.Hour)}, events.StatusUntrusted, false, true, t0, 1},
		{"recovers from stale", events.VMStatus{VMKey: vm, Status: events.StatusStale, OverdueSince: t0, ConsecutiveFailures: 9}, true,
			attempt{Verdict: good, At: t0.Add(time.Hour)}, events.StatusTrusted, true, false, time.Time{}, 0},
		{"attempt after stop keeps suspended", events.VMStatus{VMKey: vm, Status: events.StatusSuspended}, true,
			attempt{Failure: noAnswer, At: t0, KeepStatus: true}, events.StatusSuspended, false, true, t0, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.a.VMKey, tc.a.JobID = vm, "job-1"
			o := applyAttempt(tc.prev, tc.exists, tc.a, tm)
			st := o.Status
			type result struct {
				Status              events.Status
				Changed, Retry      bool
				OverdueSince        time.Time
				ConsecutiveFailures int
				LastJobID           string
				LastAttemptAt       time.Time
			}
			if d := fielddiff.Fields(
				result{st.Status, o.Changed, o.Retry, st.OverdueSince, st.ConsecutiveFailures, st.LastJobID, st.LastAttemptAt},
				result{tc.want, tc.changed, tc.retry, tc.overdue, tc.failures, "job-1", tc.a.At},
			); d != "" {
				t.Fatalf("outcome (reasons %v):%s", st.Reasons, d)
			}
			if o.Changed {
				type transition struct {
					ChangedBy      string
					Since          time.Time
					PreviousStatus events.Status
				}
				if d := fielddiff.Fields(transition{st.ChangedBy, st.Since, st.PreviousStatus}, transition{"job-1", tc.a.At, o.From}); d != "" {
					t.Errorf("transition not recorded:%s", d)
				}
			}
			next := st.NextDueAt.Sub(tc.a.At)
			if tc.retry {
				if next < 800*time.Millisecond || next > tm.RetryMax*12/10 {
					t.Errorf("retry in %s, want backoff within [%s, %s]", next, tm.RetryBase, tm.RetryMax)
				}
			} else if next < 54*time.Second || next > 66*time.Second {
				t.Errorf("next due in %s, want interval ±10%%", next)
			}
		})
	}
}

func TestRetryBackoffDoublesToTheCap(t *testing.T) {
	tm := Timing{RetryBase: time.Second, RetryMax: 8 * time.Second}
	for failures, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 9: 8 * time.Second} {
		for range 20 {
			d := tm.retryDelay(failures)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("retry after %d failures: %s, want %s ±20%%", failures, d, want)
			}
		}
	}
}

func TestStaleByDeadline(t *testing.T) {
	tm := Timing{Interval: time.Minute, Grace: 30 * time.Second, Onboarding: 5 * time.Minute}
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	attested := now.Add(-time.Hour)
	tests := []struct {
		name string
		st   events.VMStatus
		want bool
	}{
		{"due recently", events.VMStatus{Status: events.StatusTrusted, NextDueAt: now.Add(-10 * time.Second)}, false},
		{"due long ago", events.VMStatus{Status: events.StatusTrusted, NextDueAt: now.Add(-31 * time.Second)}, true},
		{"overdue since counts", events.VMStatus{Status: events.StatusUnreachable, NextDueAt: now.Add(time.Second), OverdueSince: now.Add(-time.Minute), LastGoodAt: attested}, true},
		{"never attested, overdue within the onboarding limit", events.VMStatus{Status: events.StatusUnreachable, NextDueAt: now.Add(time.Second), OverdueSince: now.Add(-4 * time.Minute)}, false},
		{"never attested, overdue past the onboarding limit", events.VMStatus{Status: events.StatusUnreachable, NextDueAt: now.Add(time.Second), OverdueSince: now.Add(-6 * time.Minute)}, true},
		{"created, within the onboarding limit", events.VMStatus{Status: events.StatusPending, NextDueAt: now.Add(-4 * time.Minute), OverdueSince: now.Add(-4 * time.Minute), Since: now.Add(-4 * time.Minute)}, false},
		{"waited for its vmId until its limit: grace from then", events.VMStatus{Status: events.StatusPending, NextDueAt: now.Add(-31 * time.Second), AwaitingVMIDSince: now.Add(-time.Hour)}, true},
		{"pending never attested", events.VMStatus{Status: events.StatusPending, Since: now.Add(-time.Hour)}, true},
		{"suspended never", events.VMStatus{Status: events.StatusSuspended, NextDueAt: now.Add(-time.Hour)}, false},
		{"untrusted never", events.VMStatus{Status: events.StatusUntrusted, NextDueAt: now.Add(-time.Hour)}, false},
		{"stale already", events.VMStatus{Status: events.StatusStale, NextDueAt: now.Add(-time.Hour)}, false},
	}
	for _, tc := range tests {
		if got := staleByDeadline(tc.st, now, tm); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestAlertsForTransitions(t *testing.T) {
	at := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	const vm = "aldtmn2tg7p3rh5huznzu5dk3n"
	key := vm + "/attestation"
	tests := []struct {
		name  string
		o     outcome
		want  []string
		state events.AlertState
	}{
		{"untrusted", outcome{Changed: true, From: events.StatusTrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusUntrusted, LastGoodAt: at}}, []string{"vm.untrusted"}, events.AlertFiring},
		{"stale", outcome{Changed: true, From: events.StatusUnreachable, Status: events.VMStatus{VMKey: vm, Status: events.StatusStale, LastGoodAt: at}}, []string{"vm.stale"}, events.AlertFiring},
		{"never attested", outcome{Changed: true, From: events.StatusPending, Status: events.VMStatus{VMKey: vm, Status: events.StatusStale}}, []string{"vm.never_attested"}, events.AlertFiring},
		{"recovered resolves", outcome{Changed: true, From: events.StatusStale, Status: events.VMStatus{VMKey: vm, Status: events.StatusTrusted}}, []string{"vm.recovered"}, events.AlertResolved},
		{"untrusted to warning resolves", outcome{Changed: true, From: events.StatusUntrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusWarning}}, []string{"vm.recovered"}, events.AlertResolved},
		{"deleted while untrusted resolves", outcome{Changed: true, From: events.StatusUntrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusRetired}}, []string{"vm.retired"}, events.AlertResolved},
		{"deleted while trusted raises nothing", outcome{Changed: true, From: events.StatusTrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusRetired}}, nil, ""},
		{"deallocated while untrusted raises nothing", outcome{Changed: true, From: events.StatusUntrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusSuspended}}, nil, ""},
		{"unreachable raises nothing", outcome{Changed: true, From: events.StatusTrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusUnreachable}}, nil, ""},
		{"no change raises nothing", outcome{From: events.StatusUntrusted, Status: events.VMStatus{VMKey: vm, Status: events.StatusUntrusted}}, nil, ""},
	}
	for _, tc := range tests {
		got := alertsFor(tc.o, "test")
		if len(got) != len(tc.want) {
			t.Fatalf("%s: %d alerts %v, want %v", tc.name, len(got), got, tc.want)
		}
		for i := range got {
			if got[i].Code != tc.want[i] || got[i].Key != key || got[i].State != tc.state {
				t.Errorf("%s: alert %s key %q state %q, want %s key %q state %q", tc.name, got[i].Code, got[i].Key, got[i].State, tc.want[i], key, tc.state)
			}
		}
	}
}

func TestApplyLifecycle(t *testing.T) {
	now := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	vm := "aldtmn2tg7p3rh5huznzu5dk3n"
	trusted := events.VMStatus{VMKey: vm, Status: events.StatusTrusted, Since: now.Add(-time.Hour), LastGoodAt: now.Add(-time.Minute)}
	tests := []struct {
		name   string
		prev   events.VMStatus
		exists bool
		kind   events.LifecycleKind
		at     time.Time
		want   events.Status
		ok     bool
	}{
		{"stop suspends", trusted, true, events.LifecycleStopped, now, events.StatusSuspended, true},
		{"deallocate suspends", trusted, true, events.LifecycleDeallocated, now, events.StatusSuspended, true},
		{"late stop older than evidence is ignored", trusted, true, events.LifecycleStopped, now.Add(-2 * time.Minute), "", false},
		{"delete retires", trusted, true, events.LifecycleDeleted, now, events.StatusRetired, true},
		{"start after stop is pending", events.VMStatus{VMKey: vm, Status: events.StatusSuspended, Since: now.Add(-time.Hour)}, true, events.LifecycleStarted, now, events.StatusPending, true},
		{"start of a new VM is pending", events.VMStatus{}, false, events.LifecycleCreated, now, events.StatusPending, true},
		{"start of an attested VM changes nothing", trusted, true, events.LifecycleStarted, now, "", false},
		{"start older than the stop is ignored", events.VMStatus{VMKey: vm, Status: events.StatusSuspended, Since: now}, true, events.LifecycleStarted, now.Add(-time.Hour), "", false},
		{"updated changes nothing", trusted, true, events.LifecycleUpdated, now, "", false},
	}
	for _, tc := range tests {
		o, ok := applyLifecycle(tc.prev, tc.exists, events.Lifecycle{VMKey: vm, Kind: tc.kind, OccurredAt: tc.at}, "ev-1", now, "w")
		if ok != tc.ok || (ok && o.Status.Status != tc.want) {
			t.Errorf("%s: ok=%v status %s, want ok=%v %s", tc.name, ok, o.Status.Status, tc.ok, tc.want)
			continue
		}
		if ok && (o.Status.Status == events.StatusSuspended || o.Status.Status == events.StatusRetired) && !o.Status.NextDueAt.IsZero() {
			t.Errorf("%s: a %s VM keeps a due time", tc.name, o.Status.Status)
		}
	}
}

// TestNextDueSpreadsABunchedFleet checks that a fleet attested all at once
// spreads evenly over the interval within a few intervals, with every gap
// within the interval ± jitter.
func TestNextDueSpreadsABunchedFleet(t *testing.T) {
	tm := Timing{Interval: time.Minute, Jitter: 0.1}
	const n = 1000
	at := make([]time.Time, n)
	vms := make([]string, n)
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	for i := range at {
		at[i] = t0
		vms[i] = events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i))
	}
	maxPerSecond := func() int {
		bins := map[int64]int{}
		most := 0
		for _, a := range at {
			k := a.UnixNano() % int64(tm.Interval) / int64(time.Second)
			bins[k]++
			most = max(most, bins[k])
		}
		return most
	}
	if m := maxPerSecond(); m != n {
		t.Fatalf("start: %d in the busiest second", m)
	}
	for round := range 8 {
		for i := range at {
			next := tm.nextDue(vms[i], at[i])
			if gap := next.Sub(at[i]); gap < 54*time.Second || gap > 66*time.Second {
				t.Fatalf("round %d: gap %s outside the interval ± jitter", round, gap)
			}
			at[i] = next
		}
	}
	// Evenly spread: about n/60 per second; allow for hashing noise.
	if m := maxPerSecond(); m > 3*n/60 {
		t.Fatalf("after 8 intervals %d attestations fall in the busiest second, want about %d", m, n/60)
	}
	// Once at its slot a VM stays there: the next gap is the interval.
	for i := range at {
		if gap := tm.nextDue(vms[i], at[i]).Sub(at[i]); gap != tm.Interval {
			t.Fatalf("settled VM: gap %s, want %s", gap, tm.Interval)
		}
	}
}

func TestLateAttestationDoesNotPushTheScheduleBack(t *testing.T) {
	tm := Timing{Interval: time.Minute, Jitter: 0.1}
	t0 := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	good := &events.Verdict{Status: events.VerdictAffirming}
	for _, tc := range []struct {
		late time.Duration
		from time.Time // the next due time counts from here
	}{
		{10 * time.Second, t0},
		{29 * time.Second, t0},
		{45 * time.Second, t0.Add(45 * time.Second)}, // more than half an interval late: from now
	} {
		o := applyAttempt(events.VMStatus{}, false, attempt{VMKey: "aldtmn2tg7p3rh5huznzu5dk3n", Verdict: good, DueAt: t0, At: t0.Add(tc.late)}, tm)
		if d := o.Status.NextDueAt.Sub(tc.from); d < 54*time.Second || d > 66*time.Second {
			t.Errorf("%s late: next due %s after %s, want the interval ± jitter", tc.late, d, tc.from.Format(time.TimeOnly))
		}
	}
}

// TestOlderEvidenceNeverOverridesNewer: two attempts of a VM overlap (a
// job redelivered to another worker during a failover, a retry beside a
// schedule) and the one whose challenge was sent first finishes last: its
// outcome changes nothing unless it is contraindicated, so that an
// affirming verdict on evidence from before a VM was tampered with never
// undoes the contraindicated verdict on evidence from after, while a
// contraindicated verdict always counts. An attempt on a newer challenge
// applies as usual.
func TestOlderEvidenceNeverOverridesNewer(t *testing.T) {
	tm := Timing{Interval: time.Minute, Jitter: 0.1, Grace: 30 * time.Second, RetryBase: time.Second, RetryMax: 8 * time.Second}
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	vm := "aldtmn2tg7p3rh5huznzu5dk3n"
	good := &events.Verdict{ID: "old", Status: events.VerdictAffirming}
	bad := &events.Verdict{ID: "new", Status: events.VerdictContraindicated, Reasons: []events.Reason{{Code: "policy.measurement_not_allowed"}}}
	untrusted := events.VMStatus{VMKey: vm, Status: events.StatusUntrusted, Since: t0.Add(2 * time.Second), Reasons: bad.Reasons,
		LastVerdictID: "new", LastChallengeAt: t0.Add(time.Second), LastAttemptAt: t0.Add(2 * time.Second), LastJobID: "job-new"}
	trusted := events.VMStatus{VMKey: vm, Status: events.StatusTrusted, Since: t0.Add(-time.Hour), LastChallengeAt: t0, LastJobID: "job-old"}

	tests := []struct {
		name  string
		prev  events.VMStatus
		a     attempt
		want  events.Status
		stale bool
	}{
		{"affirming on older evidence, appraised last", untrusted, attempt{JobID: "job-old", Verdict: good, ChallengedAt: t0, At: t0.Add(3 * time.Second)}, events.StatusUntrusted, true},
		{"no answer to an older challenge", trusted, attempt{JobID: "job-older", Failure: events.Reason{Code: "agent.timeout"}, ChallengedAt: t0.Add(-time.Second), At: t0.Add(5 * time.Second)}, events.StatusTrusted, true},
		{"contraindicated on newer evidence", trusted, attempt{JobID: "job-new", Verdict: bad, ChallengedAt: t0.Add(time.Second), At: t0.Add(2 * time.Second)}, events.StatusUntrusted, false},
		{"affirming on newer evidence", untrusted, attempt{JobID: "job-newer", Verdict: good, ChallengedAt: t0.Add(10 * time.Second), At: t0.Add(11 * time.Second)}, events.StatusTrusted, false},
		// A worker whose clock runs ahead cannot make the others'
		// findings count for nothing.
		{"contraindicated on older evidence still applies", trusted, attempt{JobID: "job-skewed", Verdict: bad, ChallengedAt: t0.Add(-time.Minute), At: t0.Add(time.Second)}, events.StatusUntrusted, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.a.VMKey = vm
			o := applyAttempt(tc.prev, true, tc.a, tm)
			if o.Status.Status != tc.want || o.Stale != tc.stale {
				t.Fatalf("status %s (stale %v), want %s (stale %v)", o.Status.Status, o.Stale, tc.want, tc.stale)
			}
			if tc.stale {
				if d := fielddiff.Fields(o.Status, tc.prev); d != "" || o.Changed {
					t.Fatalf("an attempt on older evidence changed the record (changed %v):%s", o.Changed, d)
				}
				return
			}
			want := tc.prev.LastChallengeAt
			if tc.a.ChallengedAt.After(want) {
				want = tc.a.ChallengedAt
			}
			if !o.Status.LastChallengeAt.Equal(want) {
				t.Errorf("LastChallengeAt %s, want the newer of the record's and the attempt's challenge, %s", o.Status.LastChallengeAt, want)
			}
		})
	}
}
