package keyguard_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
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
					err := poller.Request(ctx, keyrelease.SubjectRelease, reqs[j], nil)
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
		if err := h.conn.Request(ctx, keyrelease.SubjectNonce, keyrelease.NonceRequest{VMKey: vm.VMKey()}, &nr); err != nil {
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
