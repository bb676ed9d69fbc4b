package attestworker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

func hasReason(st events.VMStatus, code string) bool {
	return slices.ContainsFunc(st.Reasons, func(r events.Reason) bool { return r.Code == code })
}

func TestUnreachableThenStaleThenRecovery(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 3, sim.VMConfig{})
	trustedThenSilent, slow, neverAnswers := f.vms[0], f.vms[1], f.vms[2]
	f.setSilent(neverAnswers, true)
	cfg := testConfig(connectBus(t, srv.URL()), "w1")
	// A VM that never gave valid evidence has the onboarding limit, not
	// the 3 s grace period.
	cfg.Timing.Onboarding = 7 * time.Second
	runWorker(t, cfg)
	f.register(ctx, f.vms...)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, trustedThenSilent, slow)

	// A running VM that never answers: unreachable with retries, then stale
	// after the onboarding limit, with a never-attested alert.
	waitFor(t, 10*time.Second, "never-answering VM unreachable", func() (bool, string) {
		st, _ := statusOf(t, ctx, conn.JS, neverAnswers.VMKey())
		return st.Status == events.StatusUnreachable && hasReason(st, "agent.unreachable"), string(st.Status)
	})
	f.setSilent(trustedThenSilent, true)
	slow.mu.Lock()
	slow.delay = 2 * time.Second // beyond the 1 s challenge timeout
	slow.mu.Unlock()

	waitFor(t, 10*time.Second, "silent and slow VMs unreachable", func() (bool, string) {
		a, _ := statusOf(t, ctx, conn.JS, trustedThenSilent.VMKey())
		b, _ := statusOf(t, ctx, conn.JS, slow.VMKey())
		return a.Status == events.StatusUnreachable && b.Status == events.StatusUnreachable && hasReason(b, "agent.timeout"), string(a.Status) + " " + string(b.Status)
	})
	start := time.Now()
	waitStatus(t, ctx, conn.JS, 15*time.Second, events.StatusStale, f.vms...)
	if d := time.Since(start); d < time.Second {
		t.Errorf("stale after %s: the 3s grace period was not honoured", d)
	}
	st, _ := statusOf(t, ctx, conn.JS, neverAnswers.VMKey())
	if st.ConsecutiveFailures < 3 || !hasReason(st, "evidence.stale") {
		t.Errorf("never-answering VM: %d attempts, reasons %v: want retries and evidence.stale", st.ConsecutiveFailures, st.Reasons)
	}
	if d := st.Since.Sub(st.OverdueSince); d < cfg.Timing.Onboarding || !strings.Contains(st.Reasons[0].Message, "onboarding limit 7s") {
		t.Errorf("never-answering VM stale %s after it became due (%v), want the onboarding limit of %s", d, st.Reasons, cfg.Timing.Onboarding)
	}
	// Retries back off: the attempts of the never-answering VM get further apart.
	// The alerts follow the status writes: wait for them.
	waitFor(t, 5*time.Second, "stale alerts", func() (bool, string) {
		n, m := len(alertsWith(t, ctx, conn.JS, "vm.never_attested")), len(alertsWith(t, ctx, conn.JS, "vm.stale"))
		return n >= 1 && m >= 2, strconv.Itoa(n) + " " + strconv.Itoa(m)
	})
	never := alertsWith(t, ctx, conn.JS, "vm.never_attested")
	stale := alertsWith(t, ctx, conn.JS, "vm.stale")
	type alert struct {
		VMKey    string
		Severity events.Severity
	}
	if len(never) != 1 {
		t.Errorf("%d vm.never_attested alerts, want 1: %+v", len(never), never)
	} else if d := fielddiff.Fields(alert{never[0].VMKey, never[0].Severity}, alert{neverAnswers.VMKey(), events.SeverityCritical}); d != "" {
		t.Errorf("vm.never_attested alert:%s", d)
	}
	if len(stale) != 2 {
		t.Errorf("%d vm.stale alerts, want 2 (silent and slow VM)", len(stale))
	}
	for _, v := range []*testVM{trustedThenSilent, slow} {
		states := statesOf(t, ctx, conn.JS, v.VMKey())
		var path []events.Status
		for _, s := range states {
			path = append(path, s.To)
		}
		if !slices.Equal(path, []events.Status{events.StatusTrusted, events.StatusUnreachable, events.StatusStale}) {
			t.Errorf("%s went through %v", v.VMKey(), path)
		}
	}

	// Recovery: the agents answer again and the VMs become trusted again.
	f.setSilent(trustedThenSilent, false)
	f.setSilent(neverAnswers, false)
	slow.mu.Lock()
	slow.delay = 0
	slow.mu.Unlock()
	waitStatus(t, ctx, conn.JS, 15*time.Second, events.StatusTrusted, f.vms...)
	// The alerts follow the status write: wait for them, then for every job
	// and fired schedule stored so far to be handled, and make sure no more
	// arrived.
	waitFor(t, 5*time.Second, "three vm.recovered alerts", func() (bool, string) {
		n := len(alertsWith(t, ctx, conn.JS, "vm.recovered"))
		return n >= 3, strconv.Itoa(n)
	})
	waitIdle(t, ctx, conn.JS, 10*time.Second, jobsConsumer, scheduleConsumer)
	if n := len(alertsWith(t, ctx, conn.JS, "vm.recovered")); n != 3 {
		t.Errorf("%d vm.recovered alerts, want 3", n)
	}
	st, _ = statusOf(t, ctx, conn.JS, neverAnswers.VMKey())
	type recovered struct {
		ConsecutiveFailures int
		OverdueSince        time.Time
	}
	if d := fielddiff.Fields(recovered{st.ConsecutiveFailures, st.OverdueSince}, recovered{}); d != "" {
		t.Errorf("never-answering VM after recovery:%s", d)
	}
}

func TestRetriesBackOff(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 1, sim.VMConfig{})
	v := f.vms[0]
	// Answer nothing: every challenge times out (recorded by the agent).
	v.mu.Lock()
	v.delay = time.Hour
	v.mu.Unlock()
	cfg := testConfig(connectBus(t, srv.URL()), "w1")
	cfg.Timing.RetryBase, cfg.Timing.RetryMax = 300*time.Millisecond, 2400*time.Millisecond
	cfg.ChallengeTimeout = 200 * time.Millisecond
	runWorker(t, cfg)
	f.register(ctx, v)
	waitFor(t, 20*time.Second, "5 attempts", func() (bool, string) { return len(v.challenges()) >= 5, "" })
	c := v.challenges()
	// Gaps: timeout + backoff of 0.3, 0.6, 1.2, 2.4 s (±20%, plus scheduling).
	for i, want := range []time.Duration{300, 600, 1200, 2400} {
		gap := c[i+1].Sub(c[i]) - cfg.ChallengeTimeout
		want *= time.Millisecond
		if gap < want*75/100 || gap > want*125/100+500*time.Millisecond {
			t.Errorf("retry %d after %s, want about %s", i+1, gap, want)
		}
	}
}

func TestLifecycleSuspendsRetiresAndResumes(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 2, sim.VMConfig{})
	stopped, deleted := f.vms[0], f.vms[1]
	runWorker(t, testConfig(connectBus(t, srv.URL()), "w1"))
	f.register(ctx, f.vms...)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, f.vms...)

	lifecycle := func(v *testVM, kind events.LifecycleKind) {
		l := events.Lifecycle{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), Kind: kind, Origin: "test", OccurredAt: time.Now().UTC()}
		if _, err := conn.PublishEvent(ctx, events.LifecycleSubject(v.VMKey()), events.TypeLifecycle, "test", l); err != nil {
			t.Fatal(err)
		}
	}
	lifecycle(stopped, events.LifecycleDeallocated)
	lifecycle(deleted, events.LifecycleDeleted)
	waitStatus(t, ctx, conn.JS, 10*time.Second, events.StatusSuspended, stopped)
	waitStatus(t, ctx, conn.JS, 10*time.Second, events.StatusRetired, deleted)

	// No schedule and no further challenges while suspended or retired.
	// First the jobs and fired schedules stored so far are handled, and a
	// schedule written by an attempt that ended just after the stop has
	// fired; from then on only the sweep could enqueue a job, and it runs
	// once without doing so.
	sched := &scheduler{stream: mustStream(t, conn.JS, events.StreamSchedule)}
	waitFor(t, 10*time.Second, "no schedule and nothing in flight", func() (bool, string) {
		for _, v := range []*testVM{stopped, deleted} {
			if _, ok, err := sched.pending(ctx, v.VMKey()); ok || err != nil {
				return false, fmt.Sprintf("%s has a schedule (%v)", v.VMKey(), err)
			}
		}
		return idle(ctx, conn.JS, jobsConsumer, scheduleConsumer)
	})
	before := []int{len(stopped.challenges()), len(deleted.challenges())}
	waitSweep(t, ctx, conn.JS, 10*time.Second)
	waitIdle(t, ctx, conn.JS, 10*time.Second, jobsConsumer, scheduleConsumer)
	for i, v := range []*testVM{stopped, deleted} {
		if _, ok, _ := sched.pending(ctx, v.VMKey()); ok {
			t.Errorf("%s still has a schedule", v.VMKey())
		}
		if n := len(v.challenges()); n != before[i] {
			t.Errorf("%s challenged %d times while not running", v.VMKey(), n-before[i])
		}
	}
	// Started again: pending, then (ingest's job) trusted.
	lifecycle(stopped, events.LifecycleStarted)
	waitStatus(t, ctx, conn.JS, 10*time.Second, events.StatusPending, stopped)
	if _, err := conn.PublishJob(ctx, "test", events.Job{VMKey: stopped.VMKey(), Reason: "started"}); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ctx, conn.JS, 10*time.Second, events.StatusTrusted, stopped)
	var path []events.Status
	for _, s := range statesOf(t, ctx, conn.JS, stopped.VMKey()) {
		path = append(path, s.To)
	}
	if !slices.Equal(path, []events.Status{events.StatusTrusted, events.StatusSuspended, events.StatusPending, events.StatusTrusted}) {
		t.Errorf("stopped VM went through %v", path)
	}
}

func mustStream(t testing.TB, js jetstream.JetStream, name string) jetstream.Stream {
	t.Helper()
	s, err := js.Stream(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSweepHealsLostScheduleAndAdoptsUnscheduledVM(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 2, sim.VMConfig{})
	lost, unknown := f.vms[0], f.vms[1]
	cfg := testConfig(connectBus(t, srv.URL()), "w1")
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "attest-worker-test", NoRuntimeMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	addr := make(chan string, 1)
	cfg.Telemetry, cfg.HTTPAddr, cfg.OnListen = tel, "127.0.0.1:0", func(a string) { addr <- a }
	runWorker(t, cfg)
	base := "http://" + <-addr
	f.register(ctx, lost)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, lost)

	// Someone purges the schedule stream: the VM's next attestation would
	// never come. The sweep notices the missed deadline and enqueues it.
	// The schedule is written after the status: purge it once it is there
	// (purged before, it would be written after the purge, and nothing
	// would be missed).
	sched := &scheduler{stream: mustStream(t, conn.JS, events.StreamSchedule)}
	waitFor(t, 10*time.Second, "the trusted VM's next schedule", func() (bool, string) {
		st, _ := statusOf(t, ctx, conn.JS, lost.VMKey())
		job, ok, err := sched.pending(ctx, lost.VMKey())
		return err == nil && ok && job.DueAt.Equal(st.NextDueAt), fmt.Sprintf("schedule %v (due %s), status due %s", ok, job.DueAt, st.NextDueAt)
	})
	if err := mustStream(t, conn.JS, events.StreamSchedule).Purge(ctx, jetstream.WithPurgeSubject(events.ScheduleSubject(lost.VMKey()))); err != nil {
		t.Fatal(err)
	}
	n := len(lost.challenges())
	waitFor(t, 15*time.Second, "lost VM attested again", func() (bool, string) { return len(lost.challenges()) > n, "" })
	// The sweep raises its alert after enqueuing the job, which may be
	// done first: wait for the alert.
	var missed []events.Alert
	waitFor(t, 10*time.Second, "a missed-deadline alert", func() (bool, string) {
		missed = alertsWith(t, ctx, conn.JS, "schedule.deadline_missed")
		return len(missed) > 0, "none yet"
	})
	if missed[0].Severity != events.SeverityWarning {
		t.Fatalf("missed-deadline alert of severity %s, want %s: %+v", missed[0].Severity, events.SeverityWarning, missed[0])
	}
	st, _ := statusOf(t, ctx, conn.JS, lost.VMKey())
	if st.Status != events.StatusTrusted {
		t.Fatalf("status %s after the sweep", st.Status)
	}
	// ... and the metrics say so.
	metrics := httpGet(t, base+"/metrics")
	for _, want := range []string{`vigil_attest_deadlines_missed_total{at="sweep"`, "vigil_attest_overdue_vms", `vigil_attest_verdicts_total{`, "vigil_attest_schedule_lag_seconds_bucket"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if body := httpGet(t, base+"/readyz"); !strings.Contains(body, "nats") {
		t.Errorf("/readyz: %s", body)
	}

	// A running VM in the inventory that never got a job: the sweep adopts
	// and attests it.
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(events.VM{VMKey: unknown.VMKey(), ResourceID: unknown.ResourceID(), VMID: unknown.VMID(), PowerState: "running", EventTime: time.Now().UTC()})
	if _, err := kv.Put(ctx, unknown.VMKey(), b); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, ctx, conn.JS, 15*time.Second, events.StatusTrusted, unknown)
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}
