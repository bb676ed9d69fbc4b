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

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// benchBundle is one answer an agent gave during the pipeline run, kept to
// verify it bare afterwards.
type benchBundle struct {
	raw   []byte
	nonce []byte
	vm    *sim.VM
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
// verifier that affirms without looking (its own cost). The simulated
// agents and the NATS server run in the same process, so their work is
// part of the pipeline's cost. On a machine shared with other work the
// CPU figures are steadier than the rates. The worker runs with its default
// concurrency. VIGIL_BENCH_CPUPROFILE=prefix writes a CPU profile of the
// measured pipeline window alone to prefix.<platform>.
func BenchmarkAttestPipeline(b *testing.B) {
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX, "noop"} {
		b.Run(platform, func(b *testing.B) { benchmarkPipeline(b, platform) })
	}
}

func benchmarkPipeline(b *testing.B, platform string) {
	srv := natstest.Start(b)
	srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	conn := connectBus(b, srv.URL())
	auth := testAuthority()
	p := platform
	if p == "noop" {
		p = evidence.PlatformAzureTDX
	}
	vms, err := auth.NewFleet(b.N, sim.VMConfig{Platform: p, AK: sim.AKECDSAP256})
	if err != nil {
		b.Fatal(err)
	}
	// Agents: one subscription per VM, as real agents have.
	var mu sync.Mutex
	answers := make([]benchBundle, 0, b.N)
	for _, v := range vms {
		_, err := conn.Serve(ctx, events.ChallengeSubject(v.VMKey()), "", func(_ context.Context, data []byte) ([]byte, error) {
			var ch events.Challenge
			if err := json.Unmarshal(data, &ch); err != nil {
				return nil, err
			}
			raw, err := v.Respond(ch.Nonce)
			if err == nil {
				mu.Lock()
				answers = append(answers, benchBundle{raw: raw, nonce: ch.Nonce, vm: v})
				mu.Unlock()
			}
			return raw, err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	// The inventory, as ingest keeps it.
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		b.Fatal(err)
	}
	for _, v := range vms {
		rec, _ := json.Marshal(events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), PowerState: "running"})
		if _, err := kv.Put(ctx, v.VMKey(), rec); err != nil {
			b.Fatal(err)
		}
	}

	var done atomic.Int64
	finished := make(chan struct{})
	cfg := testConfig(connectBus(b, srv.URL()), "bench")
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
	sched := &scheduler{conn: conn, stream: mustStream(b, conn.JS, events.StreamSchedule), source: "bench"}

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
	stopProfile := profileWindow(b, platform)
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
	b.ReportMetric(0, "ns/op") // the rates above are the measure
}

func verifyBare(b *testing.B, v *evidence.Verifier, pol *appraise.Policy, bundles []benchBundle) time.Duration {
	b.Helper()
	ctx := context.Background()
	// Warm the caches with one bundle per simulated host, as the pipeline's
	// verifier was warm for all but its first bundles.
	for _, bb := range bundles[:min(len(bundles), 16)] {
		_, _, _ = appraise.Evidence(ctx, v, bb.raw, evidence.Expect{Nonce: bb.nonce, VMID: bb.vm.VMID(), VMKey: bb.vm.VMKey()}, pol, appraise.Options{})
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
				verdict, _, _ := appraise.Evidence(ctx, v, bb.raw, evidence.Expect{Nonce: bb.nonce, VMID: bb.vm.VMID(), VMKey: bb.vm.VMKey()}, pol, appraise.Options{})
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

// profileWindow starts a CPU profile of the measured pipeline window alone
// (not the setup, not the bare verification) when VIGIL_BENCH_CPUPROFILE
// names a file prefix; the profile goes to <prefix>.<platform>. It returns
// the function that stops it.
func profileWindow(b *testing.B, platform string) func() {
	prefix := os.Getenv("VIGIL_BENCH_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "." + strings.ReplaceAll(platform, "/", "_"))
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
