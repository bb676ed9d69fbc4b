package attestworker

import (
	"context"
	"encoding/json"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// benchBundle is one answer an agent gave during the pipeline run, kept to
// verify it bare afterwards.
type benchBundle struct {
	raw         []byte
	nonce       []byte
	vmID, vmKey string
}

// BenchmarkAttestPipeline drives b.N simulated VMs through the whole path
// (message schedule fires → job → challenge → verify → verdict → status
// compare-and-set → next schedule) with one worker, then verifies the very
// same bundles bare (evidence.Verifier.Attest on as many goroutines as
// CPUs) and reports:
//
//	verifications/s           attestations completed per second through the pipeline
//	bare/s                    bare verifications per second of the same bundles
//	x-bare                    pipeline rate / bare rate
//	cpu-us/verification       process CPU per attestation in the pipeline
//	bare-cpu-us/verification  process CPU per bare verification
//	x-bare-cpu                bare CPU per verification / pipeline CPU per attestation
//	                          (the ratio x-bare tends to on a machine the run has to itself)
//	fleet@5m                  VMs sustainable at a 5-minute interval (verifications/s × 300)
//
// Sub-benchmarks: SNP and TDX fleets, and "noop", the pipeline with a
// verifier that affirms without looking (its own cost), their agents
// sharing one connection; "<platform>-conns", each agent on its own
// connection as real agents are; and "<platform>-auth", the same in
// operator mode: the worker connects as the attest-worker principal with
// its inbox prefix, each agent with agent credentials for its VM and its
// inbox prefix, answering only challenges whose reply lies under the
// worker's inbox, as services/agent does. The -auth sub-benchmark also
// reports, against the -conns run of the same platform and size earlier
// in the same benchmark run:
//
//	x-no-auth                 auth rate / no-auth rate (the goal: ≥ 0.95)
//	cpu-x-no-auth             auth CPU per attestation / no-auth CPU per attestation
//
// "<platform>-outproc" runs the agents in a process of their own, each on
// its own connection (agentfleet_test.go), as on the VMs: its CPU figures
// are the verifier's side alone (the NATS server and the worker), and its
// x-bare-cpu is the one the fleet-scale goals name (SNP ≥ 0.7, TDX ≥ 0.5).
// In the other sub-benchmarks the simulated agents run in the same process
// as the NATS server, so their work is part of the pipeline's cost. On a machine shared with
// other work the CPU figures are steadier than the rates. The worker runs
// with its default concurrency. VIGIL_BENCH_CPUPROFILE=prefix writes a CPU
// profile of the measured pipeline window alone to prefix.<sub-benchmark>.
func BenchmarkAttestPipeline(b *testing.B) {
	for _, v := range []pipelineVariant{
		{evidence.PlatformAzureSNP, sharedConn},
		{evidence.PlatformAzureTDX, sharedConn},
		{"noop", sharedConn},
		{evidence.PlatformAzureSNP, ownConn},
		{evidence.PlatformAzureSNP, ownConnAuth},
		{evidence.PlatformAzureSNP, outOfProcess},
		{evidence.PlatformAzureTDX, outOfProcess},
		{"noop", outOfProcess},
	} {
		b.Run(v.name(), func(b *testing.B) { benchmarkPipeline(b, v) })
	}
}

// agentConns is how a pipeline benchmark's simulated agents connect.
type agentConns int

const (
	// sharedConn serves every VM's challenge subject on one connection.
	sharedConn agentConns = iota
	// ownConn gives each agent a connection of its own.
	ownConn
	// ownConnAuth runs the bus in operator mode: each agent connects with
	// its VM's agent credentials, the worker as the attest-worker.
	ownConnAuth
	// outOfProcess runs the agents in a process of their own, each on its
	// own connection (agentfleet_test.go): the CPU measured is the
	// verifier's side alone, the NATS server and the worker.
	outOfProcess
)

// pipelineVariant is one sub-benchmark of BenchmarkAttestPipeline.
type pipelineVariant struct {
	// platform is the fleet's (evidence.Platform*) or "noop": a TDX fleet
	// appraised by noopAppraiser.
	platform string
	agents   agentConns
}

func (v pipelineVariant) name() string {
	switch v.agents {
	case ownConn:
		return v.platform + "-conns"
	case ownConnAuth:
		return v.platform + "-auth"
	case outOfProcess:
		return v.platform + "-outproc"
	}
	return v.platform
}

// pipelineRun is a pipeline benchmark's result: attestations per second
// and process CPU per attestation.
type pipelineRun struct {
	rate float64
	cpu  time.Duration
}

// noAuthRuns keeps the ownConn runs by platform and size, for the
// ownConnAuth runs that follow them to compare with.
var noAuthRuns sync.Map // pipelineRunKey → pipelineRun

type pipelineRunKey struct {
	platform string
	n        int
}

// challengerReply is services/agent's reply check in operator mode: only
// challenges whose reply lies under the attest-worker's inbox prefix are
// answered.
func challengerReply(_, reply string) bool {
	return busauth.ReplyAllowed(busauth.InboxPrefix(busauth.AttestWorker), reply)
}

func benchmarkPipeline(b *testing.B, variant pipelineVariant) {
	platform := variant.platform
	var (
		srv *natstest.Server
		set *busauth.Set
	)
	if variant.agents == ownConnAuth {
		var err error
		if set, err = busauth.Init(busauth.Options{}); err != nil {
			b.Fatal(err)
		}
		srv = natstest.StartOperator(b, set)
	} else {
		srv = natstest.Start(b)
	}
	srv.JetStream()
	// Without auth one connection writes the inventory and the schedules
	// (and serves the agents when they share one); in operator mode the
	// principals that write them do, ingest and the attest-worker.
	var shared *bus.Conn
	if set == nil {
		shared = connectBus(b, srv.URL())
	}
	connectAs := func(p busauth.Principal) *bus.Conn {
		if set == nil {
			return shared
		}
		return connectBusAs(b, srv.URL(), mustCreds(b, set, p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	auth := testAuthority()
	p := platform
	if p == "noop" {
		p = evidence.PlatformAzureTDX
	}
	vms, err := auth.NewFleet(b.N, sim.VMConfig{Platform: p, AK: sim.AKECDSAP256})
	if err != nil {
		b.Fatal(err)
	}
	// Agents: one subscription per VM, as real agents have, on one
	// connection or each on its own.
	var mu sync.Mutex
	answers := make([]benchBundle, 0, b.N)
	for _, v := range vms {
		if variant.agents == outOfProcess {
			break // started below, once the inventory is written
		}
		agent := shared
		switch variant.agents {
		case ownConn:
			agent = connectBus(b, srv.URL())
		case ownConnAuth:
			c, err := set.AgentCreds(v.VMKey(), time.Hour)
			if err != nil {
				b.Fatal(err)
			}
			if c.InboxPrefix == "" {
				c.InboxPrefix = busauth.AgentInboxPrefix(v.VMKey())
			}
			agent = connectBusAs(b, srv.URL(), c)
		}
		var opts []bus.ServeOption
		if agent.OperatorMode() {
			opts = append(opts, bus.WithReplyCheck(challengerReply))
		}
		_, err := agent.Serve(ctx, events.ChallengeSubject(v.VMKey()), "", answering(v, func(bb benchBundle) {
			mu.Lock()
			answers = append(answers, bb)
			mu.Unlock()
		}), opts...)
		if err != nil {
			b.Fatal(err)
		}
	}
	// The inventory, as ingest keeps it.
	kv, err := connectAs(busauth.Ingest).JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range vms {
		rec, _ := json.Marshal(events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), PowerState: "running"})
		if _, err := kv.Put(ctx, v.VMKey(), rec); err != nil {
			b.Fatal(err)
		}
	}

	var fleet *agentFleet
	if variant.agents == outOfProcess {
		fleet = startAgentFleet(b, srv.URL(), p, vms)
	}

	var done atomic.Int64
	finished := make(chan struct{})
	worker := connectBus
	if set != nil {
		worker = func(t testing.TB, url string) *bus.Conn {
			return connectBusAs(t, url, mustCreds(t, set, busauth.AttestWorker))
		}
	}
	cfg := testConfig(worker(b, srv.URL()), "bench")
	cfg.Timing = Timing{Interval: time.Hour, Grace: time.Hour}
	cfg.SweepEvery = time.Hour
	cfg.ChallengeTimeout = 30 * time.Second
	cfg.AckWait = time.Minute
	// cfg.Concurrency stays at its default, as a deployed worker runs.
	var h hooks
	h.record = func(_ events.Job, st events.VMStatus) {
		if st.Status != events.StatusTrusted {
			b.Errorf("%s: %s %v", st.VMKey, st.Status, st.Reasons)
		}
		if done.Add(1) == int64(b.N) {
			close(finished)
		}
	}
	if platform == "noop" {
		h.appraiser = noopAppraiser{}
	}
	runWorkerWith(b, cfg, h)
	schedConn := connectAs(busauth.AttestWorker)
	sched := &scheduler{conn: schedConn, stream: mustStream(b, schedConn.JS, events.StreamSchedule), source: "bench"}

	// Every VM's schedule fires at the same moment. The schedules are
	// written beforehand: in steady state each attestation writes one
	// schedule, its next, and the pipeline does that.
	due := time.Now().Add(2*time.Second + time.Duration(b.N)*time.Millisecond).UTC()
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, v := range vms {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := sched.at(ctx, events.Job{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), Reason: reasonSchedule, DueAt: due}); err != nil {
				b.Error(err)
			}
		}()
	}
	wg.Wait()
	if d := time.Until(due); d > 0 {
		time.Sleep(d)
	}
	b.ReportAllocs() // allocations in the window: worker, agents and server
	b.ResetTimer()
	stopProfile := profileWindow(b, variant.name())
	start := time.Now()
	cpu0 := cpuTime()
	select {
	case <-finished:
	case <-ctx.Done():
		b.Fatalf("%d of %d attestations done", done.Load(), b.N)
	}
	pipeline := time.Since(start)
	pipelineCPU := cpuTime() - cpu0
	stopProfile()
	b.StopTimer()

	// Bare verification of the same bundles, with a fresh verifier (chain
	// caches warmed by the first bundles, as the worker's were).
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		b.Fatal(err)
	}
	pol := auth.Policy()
	mu.Lock()
	bundles := answers
	mu.Unlock()
	if fleet != nil {
		bundles = fleet.finish(b)
	}
	cpu1 := cpuTime()
	bare := verifyBare(b, v, pol, bundles)
	bareCPU := cpuTime() - cpu1
	b.ReportMetric(float64(pipelineCPU.Microseconds())/float64(b.N), "cpu-us/verification")
	b.ReportMetric(float64(bareCPU.Microseconds())/float64(len(bundles)), "bare-cpu-us/verification")
	if platform != "noop" {
		b.ReportMetric((float64(bareCPU)/float64(len(bundles)))/(float64(pipelineCPU)/float64(b.N)), "x-bare-cpu")
	}

	rate := float64(b.N) / pipeline.Seconds()
	bareRate := float64(len(bundles)) / bare.Seconds()
	b.ReportMetric(rate, "verifications/s")
	b.ReportMetric(bareRate, "bare/s")
	b.ReportMetric(rate/bareRate, "x-bare")
	b.ReportMetric(rate*300, "fleet@5m")
	run, key := pipelineRun{rate: rate, cpu: pipelineCPU / time.Duration(b.N)}, pipelineRunKey{platform, b.N}
	switch variant.agents {
	case ownConn:
		noAuthRuns.Store(key, run)
	case ownConnAuth:
		if r, ok := noAuthRuns.Load(key); ok {
			ref := r.(pipelineRun)
			b.ReportMetric(run.rate/ref.rate, "x-no-auth")
			b.ReportMetric(float64(run.cpu)/float64(ref.cpu), "cpu-x-no-auth")
		}
	}
	b.ReportMetric(0, "ns/op") // the rates above are the measure
}

func verifyBare(b *testing.B, v *evidence.Verifier, pol *appraise.Policy, bundles []benchBundle) time.Duration {
	b.Helper()
	ctx := context.Background()
	// Warm the caches with one bundle per simulated host, as the pipeline's
	// verifier was warm for all but its first bundles.
	for _, bb := range bundles[:min(len(bundles), 16)] {
		_, _, _ = appraise.Evidence(ctx, v, bb.raw, evidence.Expect{Nonce: bb.nonce, VMID: bb.vmID, VMKey: bb.vmKey}, pol, appraise.Options{})
	}
	workers := runtime.GOMAXPROCS(0)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bundles) {
					return
				}
				bb := bundles[i]
				verdict, _, _ := appraise.Evidence(ctx, v, bb.raw, evidence.Expect{Nonce: bb.nonce, VMID: bb.vmID, VMKey: bb.vmKey}, pol, appraise.Options{})
				if verdict.Status != events.VerdictAffirming {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if n := failed.Load(); n > 0 {
		b.Fatalf("%d bundles failed bare verification", n)
	}
	return d
}

type noopAppraiser struct{}

// noopAppraiser affirms every answer unseen.
func (noopAppraiser) appraise(context.Context, appraisal) (*events.Verdict, error) {
	return &events.Verdict{Status: events.VerdictAffirming, Platform: "noop"}, nil
}

func mustCreds(t testing.TB, set *busauth.Set, p busauth.Principal) busauth.Credentials {
	t.Helper()
	c, err := set.Creds(p)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// profileWindow starts a CPU profile of the measured pipeline window alone
// (not the setup, not the bare verification) when VIGIL_BENCH_CPUPROFILE
// names a file prefix; the profile goes to <prefix>.<platform>. It returns
// the function that stops it.
func profileWindow(b *testing.B, name string) func() {
	prefix := os.Getenv("VIGIL_BENCH_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "." + strings.ReplaceAll(name, "/", "_"))
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Error(err)
		}
	}
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
