package ingest

import (
	"context"
	"fmt"
	"slices"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric/noop"
	tnoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

// runNormalizer runs the VIGIL_RAW consumer alone, as Run does, until ctx
// ends.
func runNormalizer(ctx context.Context, tb testing.TB, conn *bus.Conn, workers int) error {
	tb.Helper()
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		tb.Fatal(err)
	}
	p := &processor{conn: conn, inv: &inventory{kv: kv, now: time.Now, skew: time.Minute}, policy: compliance.DefaultPolicy(),
		log: testLogger(), m: newMetrics(noop.NewMeterProvider()), now: time.Now, skew: time.Minute}
	n := &normalizer{p: p, conn: conn, tracer: tnoop.NewTracerProvider().Tracer(""), workers: workers}
	return n.run(ctx)
}

// storeBurst stores perVM raw ARM events for each of vms on VIGIL_RAW at
// once, each VM's a second apart from t0 on, interleaved across VMs, and
// returns each VM's Azure event ids in that order. tag keeps ids of
// separate bursts apart.
func storeBurst(ctx context.Context, tb testing.TB, conn *bus.Conn, tag string, t0 time.Time, vms, perVM int) map[string][]string {
	tb.Helper()
	raw, err := newRawStore(conn.NC)
	if err != nil {
		tb.Fatal(err)
	}
	ops := []string{"write", "start/action", "deallocate/action", "restart/action", "powerOff/action"}
	ids := map[string][]string{}
	evs := make([]eventgrid.Event, 0, vms*perVM)
	for i := range perVM {
		for v := range vms {
			name := fmt.Sprintf("vm-%04d", v)
			id := fmt.Sprintf("%s-%04d-%04d", tag, v, i)
			ev, err := eventgrid.ParseEvent([]byte(armEG(id, name, ops[i%len(ops)], t0.Add(time.Duration(i)*time.Second))), eventgrid.Limits{})
			if err != nil {
				tb.Fatal(err)
			}
			evs = append(evs, ev)
			ids[vmKey(name)] = append(ids[vmKey(name)], id)
		}
	}
	if err := raw.store(ctx, OriginEventGrid, evs); err != nil {
		tb.Fatal(err)
	}
	return ids
}

// normalized reports whether the normalizer's consumer has delivered and
// settled everything on VIGIL_RAW: nothing pending, nothing unacknowledged.
func normalized(ctx context.Context, conn *bus.Conn) bool {
	c, err := conn.JS.Consumer(ctx, events.StreamRaw, ConsumerName)
	if err != nil {
		return false
	}
	info, err := c.Info(ctx)
	return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0
}

// TestNormalizerDrainsBurstInOrder stores a burst of raw events many times
// the consumer's pull batch (its concurrency) at once: it is normalised
// well within a deadline far below the 30 s that a pull skipped by the
// iterator would stall the consumer for (bus.Consume's workaround), and
// each VM's lifecycle events come out in the order of its raw events,
// none of them superseded.
func TestNormalizerDrainsBurstInOrder(t *testing.T) {
	tests := []struct {
		name         string
		vms, perVM   int
		workers      int
		drainTimeout time.Duration
	}{
		{"many VMs", 100, 5, 8, 10 * time.Second},
		{"one VM", 1, 100, 8, 10 * time.Second},
		{"more workers than VMs", 4, 25, 16, 10 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			h.nats.JetStream() // provisions the streams
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			want := storeBurst(ctx, t, h.conn, "burst", time.Now().Add(-time.Hour), tt.vms, tt.perVM)

			rctx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- runNormalizer(rctx, t, h.conn, tt.workers) }()
			eventually(t, tt.drainTimeout, "the burst normalised", func() bool { return normalized(ctx, h.conn) })
			t.Logf("%d events normalised in %s", tt.vms*tt.perVM, time.Since(start).Round(time.Millisecond))
			stop()
			if err := <-done; err != nil {
				t.Fatalf("normalizer: %v", err)
			}

			for vm, ids := range want {
				var got []string
				for _, lc := range h.lifecycles(vm) {
					if lc.Superseded {
						t.Errorf("%s: event %s superseded: applied after a newer one", vm, lc.AzureEventID)
					}
					got = append(got, lc.AzureEventID)
				}
				if !slices.Equal(got, ids) {
					t.Errorf("%s: lifecycle events %v, want the raw events' order %v", vm, got, ids)
				}
			}
		})
	}
}

// benchNormalizeEvents is how many raw events one benchmark operation
// normalises from a backlog, over benchNormalizeVMs VMs.
const (
	benchNormalizeEvents = 2000
	benchNormalizeVMs    = 100
)

// BenchmarkNormalize measures the VIGIL_RAW consumer alone: each operation
// stores benchNormalizeEvents raw ARM events of benchNormalizeVMs VMs (a
// backlog many times the pull batch), starts the normalizer with ingest's
// default concurrency, and times it until the consumer holds nothing
// pending or unacknowledged. Reported: events/s, and cpu-us/event, the
// process's CPU time (the NATS server's included) per event, which
// varies less than the rate on a shared machine.
func BenchmarkNormalize(b *testing.B) {
	srv := natstest.Start(b)
	srv.JetStream() // provisions the streams
	ctx := context.Background()
	conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	const perVM = benchNormalizeEvents / benchNormalizeVMs
	t0 := time.Now().Add(-24 * time.Hour)
	var total, cpu time.Duration
	for op := range b.N {
		b.StopTimer()
		// Each operation's events are newer than the last one's.
		storeBurst(ctx, b, conn, fmt.Sprint(op), t0.Add(time.Duration(op*perVM)*time.Second), benchNormalizeVMs, perVM)
		b.StartTimer()
		start, cpuStart := time.Now(), processCPU(b)
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- runNormalizer(rctx, b, conn, DefaultConcurrency) }()
		for !normalized(ctx, conn) {
			time.Sleep(5 * time.Millisecond)
		}
		total += time.Since(start)
		cpu += processCPU(b) - cpuStart
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*benchNormalizeEvents)/total.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N*benchNormalizeEvents), "cpu-us/event")
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
