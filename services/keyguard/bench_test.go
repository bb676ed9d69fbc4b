package keyguard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/enroll"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// BenchmarkRevocationLatency measures, per iteration, the time from
// publishing a contraindicated verdict for a trusted VM to the first
// release attempt refused as revoked. Release attempts with genuine,
// correctly bound evidence (prepared beforehand) are sent back to back by
// two pollers from the moment the verdict is published; the latency is
// taken when the first refusal arrives, so it includes one release round
// trip. Reported: p50-ms, p99-ms, max-ms, and x-bus-hop, the p50 as a
// multiple of the p50 of a bare JetStream hop (publish with ack, delivery
// to a pull consumer) measured in the same run.
func BenchmarkRevocationLatency(b *testing.B) {
	// Each iteration prepares perIteration releases, each with its own
	// nonce, and leaves most of them unused: lift the nonce limits. Each
	// iteration revokes a VM of its own, so that the unused nonces of
	// earlier iterations (counted per VM on every issue) do not pile up.
	const perIteration = 48
	h := newHarness(b, func(c *keyguard.Config) {
		c.Nonces = keyguard.NonceLimits{PerVM: perIteration, VMRate: 1e6, VMBurst: 1 << 20}
	})
	trusted := func(i int) *sim.VM {
		vm := h.newVM(fmt.Sprintf("bench-%d", i))
		h.setStatus(vm, events.StatusTrusted)
		h.grant(vm, "disk-key", keyguard.BackendLocal)
		return vm
	}
	ctx := ctxT(b)
	warm := trusted(-1)
	if _, err := h.release(warm, attester(warm), "disk-key"); err != nil {
		b.Fatal(err)
	}
	poller := h.connect()

	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		vm := trusted(i)
		reqs := prepareReleases(b, h, vm, perIteration)
		b.StartTimer()

		start := time.Now()
		h.verdict(vm, events.VerdictContraindicated, events.Reason{Code: "snp.signature_invalid"})
		var (
			next    atomic.Int64
			refused atomic.Int64 // ns after start of the first revoked refusal
			wg      sync.WaitGroup
			failure atomic.Value
		)
		for range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for refused.Load() == 0 {
					j := int(next.Add(1) - 1)
					if j >= len(reqs) {
						return
					}
					err := poller.Request(ctx, keyrelease.ReleaseSubject(vm.VMKey()), reqs[j], nil)
					switch {
					case err == nil:
					case refusal(err) == keyrelease.CodeRevoked:
						refused.CompareAndSwap(0, int64(time.Since(start)))
						return
					default:
						failure.Store(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if err := failure.Load(); err != nil {
			b.Fatalf("release attempt: %v", err)
		}
		if refused.Load() == 0 {
			b.Fatalf("still releasing after %d attempts", perIteration)
		}
		lat = append(lat, time.Duration(refused.Load()))
	}
	b.StopTimer()
	hop := busHop(b, h, 200)
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	b.ReportMetric(ms(p50), "p50-ms")
	b.ReportMetric(ms(p99), "p99-ms")
	b.ReportMetric(ms(slices.Max(lat)), "max-ms")
	b.ReportMetric(float64(p50)/float64(percentile(hop, 50)), "x-bus-hop")
}

// prepareReleases builds n release requests for vm, each with its own nonce
// and evidence bound to it.
func prepareReleases(b *testing.B, h *harness, vm *sim.VM, n int) [][]byte {
	ctx := ctxT(b)
	_, pub, err := keyrelease.ClassicSuite.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	out := make([][]byte, n)
	for i := range out {
		var nr keyrelease.NonceResponse
		if err := h.conn.Request(ctx, keyrelease.NonceSubject(vm.VMKey()), keyrelease.NonceRequest{VMKey: vm.VMKey()}, &nr); err != nil {
			b.Fatal(err)
		}
		ev, err := attester(vm).Attest(ctx, nr.Nonce, keyrelease.Binding(nr.Nonce, keyrelease.ClassicSuite, pub))
		if err != nil {
			b.Fatal(err)
		}
		out[i], err = json.Marshal(keyrelease.ReleaseRequest{VMKey: vm.VMKey(), KeyName: "disk-key", Nonce: nr.Nonce,
			Suite: keyrelease.ClassicSuite, PublicKey: pub, Evidence: ev})
		if err != nil {
			b.Fatal(err)
		}
	}
	return out
}

// busHop measures n bare JetStream hops: publish (with the server's ack)
// to delivery through a pull consumer, on the same server.
func busHop(b *testing.B, h *harness, n int) []time.Duration {
	ctx := ctxT(b)
	s, err := h.js.CreateStream(ctx, jetstream.StreamConfig{Name: "BENCH_HOP", Subjects: []string{"bench.hop"}, Storage: jetstream.FileStorage})
	if err != nil {
		b.Fatal(err)
	}
	c, err := s.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "hop", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	got := make(chan time.Time, 1)
	cc, err := c.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		got <- time.Now()
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		if _, err := h.js.Publish(ctx, "bench.hop", []byte("x")); err != nil {
			b.Fatal(err)
		}
		select {
		case at := <-got:
			out = append(out, at.Sub(start))
		case <-time.After(10 * time.Second):
			b.Fatal("hop not delivered")
		}
	}
	return out
}

func percentile(d []time.Duration, p int) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	if i > 0 {
		i--
	}
	return s[min(i, len(s)-1)]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkEnroll enrolls b.N distinct simulated VMs (ECDSA attestation
// keys, as the harness makes them) through keyguard's HTTP enrollment API,
// GOMAXPROCS×8 agents at a time, each agent making its own nkey, then does
// the same evidence work bare in the same run: each VM quotes a fresh
// nonce and binding (the simulated agent's share of an enrollment) and the
// bundle is appraised under the same policy by a fresh verifier, on
// GOMAXPROCS goroutines, without HTTP, NATS or issuance. Reported:
//
//	enrollments/s             enrollments answered with a JWT per second
//	bare/s                    evidence made and appraised per second, bare
//	x-bare                    enrollments/s ÷ bare/s
//	cpu-us/enrollment         process CPU per enrollment (keyguard, agents, NATS server)
//	bare-cpu-us/enrollment    process CPU per bare evidence round
//	x-bare-cpu                bare CPU ÷ enrollment CPU (what x-bare tends to
//	                          on a machine the run has to itself)
//
// The agents, keyguard and the NATS server share the process, so the
// simulated VMs' quoting is part of both measures.
// VIGIL_BENCH_CPUPROFILE=prefix writes a CPU profile of the measured
// enrollments alone to prefix.enroll.<platform>.
func BenchmarkEnroll(b *testing.B) {
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX} {
		b.Run(platform, func(b *testing.B) { benchmarkEnroll(b, platform) })
	}
}

func benchmarkEnroll(b *testing.B, platform string) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		b.Fatal(err)
	}
	addr := make(chan string, 1)
	h := newHarness(b, func(c *keyguard.Config) {
		// Every request comes from 127.0.0.1: lift the per-source bound.
		c.Enroll = keyguard.EnrollConfig{Issuer: set.AgentIssuer(), Addr: "127.0.0.1:0", OnListen: func(a string) { addr <- a },
			TTL: time.Hour, SourceRate: 1e9, SourceBurst: 1 << 30}
	})
	url := "http://" + <-addr
	vms, err := authority(b).NewFleet(b.N, sim.VMConfig{Platform: platform, AK: sim.AKECDSAP256})
	if err != nil {
		b.Fatal(err)
	}
	for _, vm := range vms {
		h.setInventory(vm, vm.VMID())
	}
	workers := runtime.GOMAXPROCS(0) * 8
	// One keep-alive connection per concurrent agent, as agents on their
	// own VMs have.
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: workers}}
	defer hc.CloseIdleConnections()
	ctx := ctxT(b)
	enrollVM := func(vm *sim.VM) error {
		_, pub := agentKey(b)
		c := &enroll.Client{URL: url, HTTP: hc, VMKey: vm.VMKey(), Attester: attester(vm), Timeout: 20 * time.Second}
		_, err := c.Enroll(ctx, pub)
		return err
	}
	// Warm up the connections, the verifier's chain caches and the
	// policy on VMs of their own.
	warm, err := authority(b).NewFleet(workers, sim.VMConfig{Platform: platform, AK: sim.AKECDSAP256})
	if err != nil {
		b.Fatal(err)
	}
	for _, vm := range warm {
		h.setInventory(vm, vm.VMID())
	}
	if err := parallel(workers, len(warm), func(i int) error { return enrollVM(warm[i]) }); err != nil {
		b.Fatalf("warm-up enrollment: %v", err)
	}

	b.ResetTimer()
	stopProfile := profileWindow(b, "enroll."+platform)
	start, cpu0 := time.Now(), cpuTime()
	err = parallel(workers, len(vms), func(i int) error { return enrollVM(vms[i]) })
	elapsed, used := time.Since(start), cpuTime()-cpu0
	stopProfile()
	b.StopTimer()
	if err != nil {
		b.Fatalf("enrollment: %v", err)
	}

	bare, bareCPU := bareEnrollEvidence(b, vms)
	rate, bareRate := float64(b.N)/elapsed.Seconds(), float64(b.N)/bare.Seconds()
	b.ReportMetric(rate, "enrollments/s")
	b.ReportMetric(bareRate, "bare/s")
	b.ReportMetric(rate/bareRate, "x-bare")
	b.ReportMetric(float64(used.Microseconds())/float64(b.N), "cpu-us/enrollment")
	b.ReportMetric(float64(bareCPU.Microseconds())/float64(b.N), "bare-cpu-us/enrollment")
	b.ReportMetric(float64(bareCPU)/float64(used), "x-bare-cpu")
	b.ReportMetric(0, "ns/op") // the rates above are the measure
}

// bareEnrollEvidence makes and appraises, for each of vms, the evidence an
// enrollment carries, as keyguard appraises it but without HTTP, NATS or
// issuance, on GOMAXPROCS goroutines; it returns the wall and process CPU
// time taken.
func bareEnrollEvidence(b *testing.B, vms []*sim.VM) (time.Duration, time.Duration) {
	b.Helper()
	a := authority(b)
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: a.TrustRoots(), Offline: true})
	if err != nil {
		b.Fatal(err)
	}
	pol := a.Policy()
	_, pub := agentKey(b)
	ctx := context.Background()
	round := func(vm *sim.VM) error {
		nonce := evidence.NewNonce()
		binding := enroll.Binding(vm.VMKey(), nonce, pub)
		raw, err := attester(vm).Attest(ctx, nonce, binding)
		if err != nil {
			return err
		}
		exp := evidence.Expect{Nonce: nonce, ExtraData: binding, VMID: vm.VMID(), VMKey: vm.VMKey()}
		verdict, _, err := appraise.Evidence(ctx, v, raw, exp, pol, appraise.Options{})
		if verdict.Status != events.VerdictAffirming {
			return fmt.Errorf("%s: verdict %s %v (%v)", vm.VMKey(), verdict.Status, verdict.Reasons, err)
		}
		return nil
	}
	// Warm the verifier's caches, as keyguard's were warm.
	for _, vm := range vms[:min(len(vms), 16)] {
		if err := round(vm); err != nil {
			b.Fatal(err)
		}
	}
	start, cpu0 := time.Now(), cpuTime()
	err = parallel(runtime.GOMAXPROCS(0), len(vms), func(i int) error { return round(vms[i]) })
	elapsed, used := time.Since(start), cpuTime()-cpu0
	if err != nil {
		b.Fatalf("bare: %v", err)
	}
	return elapsed, used
}

// parallel runs fn(0..n-1) on workers goroutines and returns the first
// error; after an error the remaining indices are skipped.
func parallel(workers, n int, fn func(i int) error) error {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		failed  atomic.Bool
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// profileWindow starts a CPU profile of a measured window alone when
// VIGIL_BENCH_CPUPROFILE names a file prefix; the profile goes to
// <prefix>.<name>. It returns the function that stops it.
func profileWindow(b *testing.B, name string) func() {
	prefix := os.Getenv("VIGIL_BENCH_CPUPROFILE")
	if prefix == "" {
		return func() {}
	}
	f, err := os.Create(prefix + "." + name)
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
