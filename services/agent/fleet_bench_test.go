package agent_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/agent"
)

// memInUse is heap and stack memory in use after a full collection.
func memInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse + m.StackInuse
}

// challengeAll sends n challenges round-robin over the fleet's VMs, conc at
// a time, and returns how long they took.
func challengeAll(ctx context.Context, c *bus.Conn, fleet *agent.Fleet, n, conc int) (time.Duration, error) {
	vms := fleet.VMs()
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				vm := vms[i%len(vms)].VMKey()
				rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				var raw []byte
				err := c.Request(rctx, events.ChallengeSubject(vm), events.Challenge{VMKey: vm, Nonce: evidence.NewNonce()}, &raw)
				cancel()
				if err == nil && len(raw) < 1000 {
					err = fmt.Errorf("answer of %d bytes", len(raw))
				}
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("%s: %w", vm, err) })
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}

// TestThousandSimulatedVMsInOneProcess serves 1,000 simulated VMs on one
// connection and has every one of them answer a challenge.
func TestThousandSimulatedVMsInOneProcess(t *testing.T) {
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx := ctxT(t, 2*time.Minute)
	before := memInUse()
	start := time.Now()
	fleet, err := agent.NewFleet(agent.FleetConfig{Authority: authority(), VMs: 1000, TDXEvery: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Serve(ctx, c); err != nil {
		t.Fatal(err)
	}
	created := time.Since(start)
	perVM := (memInUse() - before) / 1000
	took, err := challengeAll(ctx, c, fleet, 1000, 32)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range fleet.VMs() {
		if vm.Answered() != 1 {
			t.Fatalf("%s answered %d challenges, want 1", vm.VMKey(), vm.Answered())
		}
	}
	t.Logf("1000 VMs: created and subscribed in %s, %d bytes per VM, 1000 challenges in %s (%.0f/s)", created.Round(time.Millisecond), perVM, took.Round(time.Millisecond), 1000/took.Seconds())
}

// BenchmarkSimulatedFleet measures 1,000 simulated VMs in one process: the
// memory each costs (heap and stacks, its agent subscribed) and the
// challenges per second the fleet answers (evidence signed in pure Go, sent
// over NATS; the requester runs in the same process).
func BenchmarkSimulatedFleet(b *testing.B) {
	srv := natstest.Start(b)
	c := connect(b, srv.URL())
	requester := connect(b, srv.URL())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	before := memInUse()
	fleet, err := agent.NewFleet(agent.FleetConfig{Authority: authority(), VMs: 1000, TDXEvery: 4, RatePerSecond: 1e6, Burst: 1000})
	if err != nil {
		b.Fatal(err)
	}
	if err := fleet.Serve(ctx, c); err != nil {
		b.Fatal(err)
	}
	perVM := float64(memInUse()-before) / 1000
	b.ResetTimer()
	took, err := challengeAll(ctx, requester, fleet, b.N, 64)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(perVM, "B/VM")
	b.ReportMetric(float64(b.N)/took.Seconds(), "challenges/s")
}
