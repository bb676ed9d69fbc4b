package bus_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// publishLifecycles publishes perVM lifecycle events for each of vms,
// interleaved (vm 0, vm 1, ..., vm 0, ...), and returns the stream
// sequences of each VM's events in publishing order.
func publishLifecycles(ctx context.Context, t *testing.T, c *bus.Conn, vms []string, perVM int) map[string][]uint64 {
	t.Helper()
	seqs := map[string][]uint64{}
	for range perVM {
		for _, vm := range vms {
			e, err := events.New(events.TypeLifecycle, "test", "", lifecycle(vm))
			if err != nil {
				t.Fatal(err)
			}
			ack, err := c.Publish(ctx, events.LifecycleSubject(vm), e)
			if err != nil {
				t.Fatal(err)
			}
			seqs[vm] = append(seqs[vm], ack.Sequence)
		}
	}
	return seqs
}

func testVMs(n int) []string {
	vms := make([]string, n)
	for i := range vms {
		vms[i] = events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-%d", i))
	}
	return vms
}

// startConsuming starts a server with the Vigil streams and returns a
// connection to it and a context for a runner, cancelled to stop it.
func startConsuming(t *testing.T) (*bus.Conn, jetstream.JetStream, context.Context, context.CancelFunc) {
	t.Helper()
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx, cancel := context.WithCancel(ctxT(t))
	return connect(t, srv.URL()), js, ctx, cancel
}

// waitSettled waits until the consumer has nothing pending and nothing
// awaiting an ack, and returns its state.
func waitSettled(ctx context.Context, t *testing.T, js jetstream.JetStream, stream, consumer string, timeout time.Duration) *jetstream.ConsumerInfo {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *jetstream.ConsumerInfo
	for time.Now().Before(deadline) {
		if c, err := js.Consumer(ctx, stream, consumer); err == nil {
			if info, err := c.Info(ctx); err == nil {
				last = info
				if info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Stream > 0 {
					return info
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("consumer %s not settled within %s: %+v", consumer, timeout, last)
	return nil
}

// TestOrderingKeyKeepsEachKeyInOrder: with an ordering key, the messages
// of one key are handled one at a time in stream order while different
// keys are handled in parallel, and the key function's Value reaches the
// handler.
func TestOrderingKeyKeepsEachKeyInOrder(t *testing.T) {
	tests := []struct {
		name        string
		vms         int
		concurrency int
	}{
		{"one key", 1, 4},
		{"more keys than handlers", 12, 4},
		{"more handlers than keys", 3, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, js, ctx, cancel := startConsuming(t)
			defer cancel()
			vms := testVMs(tt.vms)
			want := publishLifecycles(ctx, t, c, vms, 30)

			var (
				mu                sync.Mutex
				got               = map[string][]uint64{}
				activeByVM        = map[string]int{}
				active, maxActive int
				overlapSameVM     bool
			)
			handler := func(_ context.Context, m *bus.Message) error {
				vm := events.VMFromSubject(m.Msg.Subject())
				if m.Value != vm {
					t.Errorf("Value %v, want the key %s", m.Value, vm)
				}
				mu.Lock()
				activeByVM[vm]++
				overlapSameVM = overlapSameVM || activeByVM[vm] > 1
				active++
				maxActive = max(maxActive, active)
				got[vm] = append(got[vm], m.Meta.Sequence.Stream)
				mu.Unlock()
				time.Sleep(2 * time.Millisecond) // work, so that handlers overlap
				mu.Lock()
				activeByVM[vm]--
				active--
				mu.Unlock()
				return nil
			}
			key := func(m *bus.Message) string {
				vm := events.VMFromSubject(m.Msg.Subject())
				m.Value = vm
				return vm
			}
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "ordered"}, handler,
					bus.WithConcurrency(tt.concurrency), bus.WithOrderingKey(key))
			}()
			waitSettled(ctx, t, js, events.StreamEvents, "ordered", 20*time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Consume: %v", err)
			}

			mu.Lock()
			defer mu.Unlock()
			for _, vm := range vms {
				if !slices.Equal(got[vm], want[vm]) {
					t.Errorf("%s handled %v, want stream order %v", vm, got[vm], want[vm])
				}
			}
			if overlapSameVM {
				t.Error("two messages of one key were handled at once")
			}
			if wantParallel := min(tt.vms, tt.concurrency) > 1; wantParallel && maxActive < 2 {
				t.Errorf("at most %d handlers ran at once, want different keys in parallel", maxActive)
			}
		})
	}
}

// TestConsumeDrainsBurst: a burst many times the pull batch (the
// concurrency) drains within a deadline far below the 30 s a pull the
// iterator skipped would stall it for (see pullRecheck), with and without
// an ordering key.
func TestConsumeDrainsBurst(t *testing.T) {
	for _, keyed := range []bool{false, true} {
		t.Run(fmt.Sprintf("ordering key %v", keyed), func(t *testing.T) {
			c, js, ctx, cancel := startConsuming(t)
			defer cancel()
			publishLifecycles(ctx, t, c, testVMs(20), 50)
			opts := []bus.ConsumeOption{bus.WithConcurrency(4)}
			if keyed {
				opts = append(opts, bus.WithOrderingKey(func(m *bus.Message) string { return m.Msg.Subject() }))
			}
			var handled atomic.Int64
			done := make(chan error, 1)
			go func() {
				done <- c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "burst"}, func(context.Context, *bus.Message) error {
					handled.Add(1)
					return nil
				}, opts...)
			}()
			waitSettled(ctx, t, js, events.StreamEvents, "burst", 10*time.Second)
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Consume: %v", err)
			}
			if n := handled.Load(); n != 1000 {
				t.Fatalf("handled %d messages, want 1000", n)
			}
		})
	}
}

// TestConsumeRetriesCreateUntilStreamExists: with WithRetryCreate, a
// consumer on a stream that does not exist yet is created once it does.
func TestConsumeRetriesCreateUntilStreamExists(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	handled := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "late"}, func(_ context.Context, m *bus.Message) error {
			handled <- m.Envelope.ID
			return nil
		}, bus.WithRetryCreate())
	}()
	natstest.Provision(t, nc, events.Topology{})
	vm := testVMs(1)[0]
	if _, err := c.PublishEvent(ctx, events.LifecycleSubject(vm), events.TypeLifecycle, "test", lifecycle(vm)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case err := <-done:
		t.Fatalf("Consume returned %v before the stream existed", err)
	case <-time.After(15 * time.Second):
		t.Fatal("no message handled")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Consume: %v", err)
	}
}

// batcher records what ConsumeBatch hands it; failAt makes the wait of
// that batch (counted from 1) fail.
type batcher struct {
	mu      sync.Mutex
	added   []uint64   // stream sequences, in the order added
	batches [][]uint64 // flushed
	cur     []uint64
	failAt  int
}

func (b *batcher) Add(_ jetstream.Msg, meta *jetstream.MsgMetadata) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.added = append(b.added, meta.Sequence.Stream)
	b.cur = append(b.cur, meta.Sequence.Stream)
}

func (b *batcher) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.added)
}

func (b *batcher) Flush(context.Context) (func() error, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches = append(b.batches, b.cur)
	b.cur = nil
	n := len(b.batches)
	return func() error {
		if n == b.failAt {
			return fmt.Errorf("batch %d: %w", n, errWriteFailed)
		}
		return nil
	}, nil
}

var errWriteFailed = errors.New("write failed")

// TestConsumeBatch: every message reaches the batcher once, in stream
// order, in batches of at most the batch size; a partial batch is flushed
// once the stream holds nothing more (the batch wait here is far longer
// than the test); durable batches are acknowledged, with AckAll and with
// AckExplicit; a failed batch stops the runner with its error and nothing
// from it on is acknowledged.
func TestConsumeBatch(t *testing.T) {
	tests := []struct {
		name     string
		policy   jetstream.AckPolicy
		failAt   int
		wantAcks uint64 // ack floor
	}{
		{"ack all", jetstream.AckAllPolicy, 0, 250},
		{"ack explicit", jetstream.AckExplicitPolicy, 0, 250},
		{"second batch fails", jetstream.AckAllPolicy, 2, 100},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, js, ctx, cancel := startConsuming(t)
			defer cancel()
			want := publishLifecycles(ctx, t, c, testVMs(1), 250)[testVMs(1)[0]]

			b := &batcher{failAt: tt.failAt}
			done := make(chan error, 1)
			go func() {
				done <- c.ConsumeBatch(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "batch", AckPolicy: tt.policy}, b,
					bus.WithBatch(100, time.Hour))
			}()
			if tt.failAt > 0 {
				select {
				case err := <-done:
					if !errors.Is(err, errWriteFailed) {
						t.Fatalf("ConsumeBatch = %v, want the failed write", err)
					}
				case <-time.After(10 * time.Second):
					t.Fatal("ConsumeBatch did not stop at the failed batch")
				}
			} else {
				waitSettled(ctx, t, js, events.StreamEvents, "batch", 10*time.Second)
				cancel()
				if err := <-done; err != nil {
					t.Fatalf("ConsumeBatch: %v", err)
				}
			}
			// Acks are sent without waiting: a round trip to the server
			// after ConsumeBatch returned makes sure it has them all.
			if err := c.NC.Flush(); err != nil {
				t.Fatal(err)
			}
			cons, err := js.Consumer(ctxT(t), events.StreamEvents, "batch")
			if err != nil {
				t.Fatal(err)
			}
			info, err := cons.Info(ctxT(t))
			if err != nil {
				t.Fatal(err)
			}
			if info.AckFloor.Stream != tt.wantAcks {
				t.Errorf("ack floor %d, want %d", info.AckFloor.Stream, tt.wantAcks)
			}

			b.mu.Lock()
			defer b.mu.Unlock()
			if tt.failAt == 0 && !slices.Equal(b.added, want) {
				t.Errorf("added %v, want every message once in stream order", b.added)
			}
			for i, batch := range b.batches {
				if len(batch) == 0 || len(batch) > 100 {
					t.Errorf("batch %d has %d messages, want 1..100", i+1, len(batch))
				}
			}
		})
	}
}

// TestConsumeBatchRecreateStartsAtOptStartSeq: WithRecreate replaces the
// durable consumer, so that a start sequence an update could not change
// takes effect; the batcher then gets the stream from there on.
func TestConsumeBatchRecreateStartsAtOptStartSeq(t *testing.T) {
	c, js, ctx, cancel := startConsuming(t)
	defer cancel()
	vm := testVMs(1)[0]
	seqs := publishLifecycles(ctx, t, c, []string{vm}, 10)[vm]
	for _, start := range []uint64{seqs[0], seqs[5]} {
		b := &batcher{}
		cfg := jetstream.ConsumerConfig{Durable: "recreated", AckPolicy: jetstream.AckAllPolicy,
			DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: start}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.ConsumeBatch(rctx, events.StreamEvents, cfg, b, bus.WithRecreate()) }()
		want := seqs[slices.Index(seqs, start):]
		// The consumer of the round before looks settled until it is
		// replaced: wait for the batcher first.
		for deadline := time.Now().Add(10 * time.Second); b.count() < len(want); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("start %d: %d messages added, want %d", start, b.count(), len(want))
			}
		}
		waitSettled(ctx, t, js, events.StreamEvents, "recreated", 10*time.Second)
		stop()
		if err := <-done; err != nil {
			t.Fatalf("start %d: ConsumeBatch: %v", start, err)
		}
		b.mu.Lock()
		if !slices.Equal(b.added, want) {
			t.Errorf("start %d: added %v, want %v", start, b.added, want)
		}
		b.mu.Unlock()
	}
}
