package attestworker

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// TestTwoWorkersShareTheFleetWithNoDoubleAndNoGap runs two workers over 500
// VMs for several intervals and checks that every VM was attested exactly
// once per due time: each attempt is for the due time the previous one set
// (no double, no skipped interval), due times are the interval ± jitter
// apart (or a retry's backoff after a failure), and the agents saw no
// challenge that no attempt accounts for.
func TestTwoWorkersShareTheFleetWithNoDoubleAndNoGap(t *testing.T) {
	const n = 500
	interval := 5 * time.Second
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, n, sim.VMConfig{})

	type record struct {
		worker   int
		job      events.Job
		st       events.VMStatus
		recorded time.Time
	}
	var mu sync.Mutex
	records := map[string][]record{}
	var perWorker [2]int
	for i := range 2 {
		cfg := testConfig(connectBus(t, srv.URL()), fmt.Sprintf("w%d", i+1))
		cfg.Timing.Interval = interval
		cfg.Timing.Grace = 5 * interval
		cfg.ChallengeTimeout = 3 * time.Second // a loaded machine answers slowly
		cfg.AckWait = 10 * time.Second
		cfg.Concurrency = 32
		record := func(job events.Job, st events.VMStatus) {
			mu.Lock()
			defer mu.Unlock()
			records[job.VMKey] = append(records[job.VMKey], record{worker: i, job: job, st: st, recorded: time.Now()})
			perWorker[i]++
		}
		runWorkerWith(t, cfg, hooks{record: record})
	}
	// VMs come up over one interval, as a fleet does (a fleet registered
	// all at once spreads out over a few intervals: TestNextDueSpreadsABunchedFleet).
	for i := 0; i < n; i += n / 20 {
		f.register(ctx, f.vms[i:i+n/20]...)
		time.Sleep(interval / 20)
	}
	waitStatus(t, ctx, conn.JS, 60*time.Second, events.StatusTrusted, f.vms...)
	const rounds = 3
	start := time.Now()
	time.Sleep(rounds * interval)

	mu.Lock()
	defer mu.Unlock()
	jitter := time.Duration(float64(interval) * 0.1)
	doubles, skipped, short := 0, 0, 0
	for _, v := range f.vms {
		rs := records[v.VMKey()]
		// At least rounds-1 attempts in the observed rounds (the machine
		// may be loaded: lateness is not what this test is about).
		after := 0
		for _, r := range rs {
			if r.recorded.After(start) {
				after++
			}
		}
		if after < rounds-1 {
			short++
			t.Errorf("%s: %d attempts in %d intervals", v.VMKey(), after, rounds)
		}
		seen := map[time.Time]bool{}
		for i, r := range rs {
			if seen[r.job.DueAt] {
				doubles++
				t.Errorf("%s attested twice for the due time %s", v.VMKey(), r.job.DueAt.Format(time.StampMilli))
			}
			seen[r.job.DueAt] = true
			if i == 0 {
				continue
			}
			prev := rs[i-1]
			if !r.job.DueAt.Equal(prev.st.NextDueAt) {
				skipped++
				t.Errorf("%s: attempt %d (%s) is for %s, but the previous one set %s",
					v.VMKey(), i, r.job.Reason, r.job.DueAt.Format(time.StampMilli), prev.st.NextDueAt.Format(time.StampMilli))
			}
			if prev.st.ConsecutiveFailures == 0 {
				// The next due time counts from the due time, or from the
				// attempt when that ran more than half an interval late.
				base := prev.job.DueAt
				if prev.st.LastAttemptAt.Sub(base) >= interval/2 {
					base = prev.st.LastAttemptAt
				}
				if d := prev.st.NextDueAt.Sub(base); d < interval-jitter-time.Millisecond || d > interval+jitter+time.Millisecond {
					t.Errorf("%s: next due %s after the previous one", v.VMKey(), d)
				}
			}
		}
		// Every challenge the agent saw belongs to an attempt (a challenge
		// may still be in flight at the end).
		if c := len(v.challenges()); c < len(rs) || c > len(rs)+1 {
			t.Errorf("%s: %d challenges for %d attempts", v.VMKey(), c, len(rs))
		}
	}
	t.Logf("%d VMs, interval %s, %d intervals: doubles %d, skipped %d, short %d, attempts per worker %d/%d",
		n, interval, rounds, doubles, skipped, short, perWorker[0], perWorker[1])
	if perWorker[0] < n/10 || perWorker[1] < n/10 {
		t.Errorf("attempts per worker %d/%d: the workers do not share the fleet", perWorker[0], perWorker[1])
	}
}

// killable is a worker whose handler can be frozen at a point of a job and
// whose connection can be cut as if the process died there.
type killable struct {
	stop   func() error
	conn   interface{ Close() }
	frozen chan string // receives the VM when the handler reached the point
	thaw   chan struct{}
}

func startKillable(t *testing.T, url, name, point string) *killable {
	t.Helper()
	k := &killable{frozen: make(chan string, 1), thaw: make(chan struct{})}
	c := connectBus(t, url)
	cfg := testConfig(c, name)
	cfg.Timing.Grace = 15 * time.Second // longer than the takeover (AckWait)
	var once sync.Once
	freeze := func(p, vm string) {
		if p != point {
			return
		}
		once.Do(func() {
			k.frozen <- vm
			<-k.thaw
		})
	}
	k.conn = c.NC
	k.stop = runWorkerWith(t, cfg, hooks{point: freeze})
	return k
}

// kill cuts the worker's connection (no drain, nothing acknowledged) and
// lets the frozen handler run into the closed connection.
func (k *killable) kill() {
	k.conn.Close()
	close(k.thaw)
	_ = k.stop()
}

func TestWorkerKilledMidJobLosesNothingAndStoresOneVerdict(t *testing.T) {
	for _, point := range []string{"appraised", "verdict", "status"} {
		t.Run("killed after "+point, func(t *testing.T) {
			t.Parallel()
			srv, conn, ctx := testEnv(t)
			f := newFleet(t, ctx, conn, 1, sim.VMConfig{})
			v := f.vms[0]
			a := startKillable(t, srv.URL(), "doomed", point)
			f.register(ctx, v)
			var vm string
			select {
			case vm = <-a.frozen:
			case <-time.After(20 * time.Second):
				t.Fatal("the job never reached " + point)
			}
			a.kill()
			// Another worker takes over the unacknowledged job.
			survivor := testConfig(connectBus(t, srv.URL()), "survivor")
			survivor.Timing.Grace = 15 * time.Second
			runWorker(t, survivor)
			waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, v)
			st, _ := statusOf(t, ctx, conn.JS, vm)
			firstJob := st.LastJobID
			if st.Worker != "survivor" && point != "status" {
				t.Errorf("status written by %s", st.Worker)
			}
			// Exactly one verdict for the job, and the status names it.
			var forJob []events.Verdict
			for _, vd := range verdictsOf(t, ctx, conn.JS, vm) {
				if vd.JobID == firstJob {
					forJob = append(forJob, vd)
				}
			}
			if len(forJob) != 1 || forJob[0].ID != st.LastVerdictID {
				t.Fatalf("%d verdicts for job %s (status names %s): %+v", len(forJob), firstJob, st.LastVerdictID, forJob)
			}
			// The schedule survived: the VM is attested again.
			n := len(v.challenges())
			waitFor(t, 15*time.Second, "re-attestation after the takeover", func() (bool, string) { return len(v.challenges()) > n, "" })
			if states := statesOf(t, ctx, conn.JS, vm); len(states) != 1 {
				t.Errorf("state changes %+v, want one", states)
			}
		})
	}
}

func TestNATSRestartMidRun(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 20, sim.VMConfig{})
	cfg := testConfig(connectBus(t, srv.URL()), "w1")
	cfg.Timing.Grace = 30 * time.Second // the restart, not the grace period, is under test
	runWorker(t, cfg)
	f.register(ctx, f.vms...)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, f.vms...)
	srv.Restart()
	restarted := time.Now()
	// Every VM is attested at least twice more after the restart and none
	// went stale.
	waitFor(t, 30*time.Second, "two attestations of every VM after the restart", func() (bool, string) {
		for _, v := range f.vms {
			after := 0
			for _, c := range v.challenges() {
				if c.After(restarted) {
					after++
				}
			}
			if after < 2 {
				return false, fmt.Sprintf("%s: %d", v.VMKey(), after)
			}
		}
		return true, ""
	})
	waitStatus(t, ctx, conn.JS, 10*time.Second, events.StatusTrusted, f.vms...)
	if n := len(alertsWith(t, ctx, conn.JS, "vm.stale")); n != 0 {
		t.Errorf("%d VMs went stale across the restart", n)
	}
}

// TestClusterNodeLoss: losing the node that leads the schedule stream
// loses no VM's schedule, on an open cluster and on one in operator mode
// (the worker, the agents, the registering ingest and the reading
// administrator each with its own credentials).
func TestClusterNodeLoss(t *testing.T) {
	for _, auth := range []bool{false, true} {
		name := "open"
		if auth {
			name = "operator mode"
		}
		t.Run(name, func(t *testing.T) { testClusterNodeLoss(t, auth) })
	}
}

func testClusterNodeLoss(t *testing.T, auth bool) {
	var cl *natstest.Cluster
	// as connects as principal p (without auth: an open connection).
	as := func(busauth.Principal) *bus.Conn { return connectBus(t, cl.URLs()) }
	var agentConn func(string) *bus.Conn
	if auth {
		set, err := busauth.Init(busauth.Options{})
		if err != nil {
			t.Fatal(err)
		}
		cl = natstest.StartOperatorCluster(t, set, 3)
		as = func(p busauth.Principal) *bus.Conn { return connectBusAs(t, cl.URLs(), mustCreds(t, set, p)) }
		agentConn = func(vm string) *bus.Conn {
			c, err := set.AgentCreds(vm, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			return connectBusAs(t, cl.URLs(), c)
		}
	} else {
		cl = natstest.StartCluster(t, 3)
	}
	conn := as(busauth.Admin) // provisions and reads
	ctx := t.Context()
	// Placement of replicated streams can fail while the cluster settles.
	waitFor(t, 60*time.Second, "provisioning with 3 replicas", func() (bool, string) {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := events.Provision(pctx, conn.JS, events.Topology{Replicas: 3})
		return err == nil, fmt.Sprint(err)
	})
	f := newFleetOn(t, ctx, as(busauth.Ingest), agentConn, 10, sim.VMConfig{})
	cfg := testConfig(as(busauth.AttestWorker), "w1")
	cfg.Topology = events.Topology{Replicas: 3}
	// Electing a new leader takes a few seconds; this test is about not
	// losing the schedule, not about the grace period.
	cfg.Timing.Grace = time.Minute
	runWorker(t, cfg)
	f.register(ctx, f.vms...)
	waitStatus(t, ctx, conn.JS, 30*time.Second, events.StatusTrusted, f.vms...)

	// Lose the node leading the schedule stream: the schedules are
	// replicated, a new leader fires them.
	leader := cl.StreamLeader(events.StreamSchedule, 10*time.Second)
	leader.Stop()
	lost := time.Now()
	waitFor(t, 45*time.Second, "two attestations of every VM after the node loss", func() (bool, string) {
		for _, v := range f.vms {
			after := 0
			for _, c := range v.challenges() {
				if c.After(lost) {
					after++
				}
			}
			if after < 2 {
				return false, fmt.Sprintf("%s: %d", v.VMKey(), after)
			}
		}
		return true, ""
	})
	if n := len(alertsWith(t, ctx, conn.JS, "vm.stale")); n != 0 {
		t.Errorf("%d VMs went stale after the node loss", n)
	}
}
