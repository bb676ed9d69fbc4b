package bus_test

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// benchRounds is how many alternating rounds of runner and baseline one
// run of BenchmarkConsume measures.
const benchRounds = 4

// BenchmarkConsume measures the runner's own cost: lifecycle events of 100
// VMs, published beforehand, through a handler that does nothing, until
// the consumer has acknowledged them all: Consume with its default
// concurrency and WithAckNoWait ("plain"), the same with the VM as
// ordering key ("keyed"), and ConsumeBatch with a batcher that writes
// nothing ("batch"). The baseline is a loop of jetstream FetchNoWait
// calls of 256 messages acknowledging each without waiting, over the same
// messages in alternating rounds. Reported: msgs/s and bare-msgs/s, x-bare = their
// ratio, and cpu-us/msg and bare-cpu-us/msg, the process's CPU time (the
// NATS server's included) per message, which varies less than the rates on
// a shared machine.
func BenchmarkConsume(b *testing.B) {
	b.Run("plain", func(b *testing.B) {
		benchmarkConsume(b, func(ctx context.Context, c *bus.Conn, durable string) error {
			return c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: durable}, nopHandler, bus.WithAckNoWait())
		})
	})
	b.Run("keyed", func(b *testing.B) {
		benchmarkConsume(b, func(ctx context.Context, c *bus.Conn, durable string) error {
			return c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: durable}, nopHandler, bus.WithAckNoWait(),
				bus.WithOrderingKey(func(m *bus.Message) string { return events.VMFromSubject(m.Msg.Subject()) }))
		})
	})
	b.Run("batch", func(b *testing.B) {
		benchmarkConsume(b, func(ctx context.Context, c *bus.Conn, durable string) error {
			return c.ConsumeBatch(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: durable, AckPolicy: jetstream.AckAllPolicy}, nopBatcher{})
		})
	})
}

func nopHandler(context.Context, *bus.Message) error { return nil }

type nopBatcher struct{}

func (nopBatcher) Add(jetstream.Msg, *jetstream.MsgMetadata) {}
func (nopBatcher) Flush(context.Context) (func() error, error) {
	return func() error { return nil }, nil
}

// benchmarkConsume times consume against the baseline over b.N messages in
// benchRounds alternating rounds.
func benchmarkConsume(b *testing.B, consume func(ctx context.Context, c *bus.Conn, durable string) error) {
	srv := natstest.Start(b)
	nc, js := srv.JetStream()
	ctx := context.Background()
	c, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	runner := func(last uint64) {
		rctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- consume(rctx, c, "runner") }()
		waitAcked(ctx, b, js, "runner", last)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
	bare := func(last uint64) {
		cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "bare", AckPolicy: jetstream.AckExplicitPolicy})
		if err != nil {
			b.Fatal(err)
		}
		for got := uint64(0); got < last; {
			batch, err := cons.FetchNoWait(256)
			if err != nil {
				b.Fatal(err)
			}
			for m := range batch.Messages() {
				_ = m.Ack()
				if md, err := m.Metadata(); err == nil {
					got = md.Sequence.Stream
				}
			}
		}
		waitAcked(ctx, b, js, "bare", last)
	}
	var runTime, bareTime, runCPU, bareCPU time.Duration
	var last uint64
	b.ResetTimer()
	for r := range benchRounds {
		b.StopTimer()
		last = publishBench(ctx, b, nc, r, b.N/benchRounds+1)
		b.StartTimer()
		phases := []struct {
			f         func(uint64)
			wall, cpu *time.Duration
		}{{runner, &runTime, &runCPU}, {bare, &bareTime, &bareCPU}}
		if r%2 == 1 {
			phases[0], phases[1] = phases[1], phases[0]
		}
		for _, ph := range phases {
			start, cpu := time.Now(), processCPU(b)
			ph.f(last)
			*ph.wall += time.Since(start)
			*ph.cpu += processCPU(b) - cpu
		}
	}
	b.StopTimer()
	n := float64(last)
	b.ReportMetric(n/runTime.Seconds(), "msgs/s")
	b.ReportMetric(n/bareTime.Seconds(), "bare-msgs/s")
	b.ReportMetric(bareTime.Seconds()/runTime.Seconds(), "x-bare")
	b.ReportMetric(float64(runCPU.Microseconds())/n, "cpu-us/msg")
	b.ReportMetric(float64(bareCPU.Microseconds())/n, "bare-cpu-us/msg")
}

// publishBench publishes n lifecycle events of 100 VMs and returns the
// stream sequence of the last.
func publishBench(ctx context.Context, b *testing.B, nc *nats.Conn, round, n int) uint64 {
	b.Helper()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		b.Fatal(err)
	}
	vms := testVMs(100)
	for i := range n {
		vm := vms[i%len(vms)]
		e, err := events.New(events.TypeLifecycle, "bench", "", lifecycle(vm))
		if err != nil {
			b.Fatal(err)
		}
		msg, err := bus.Msg(ctx, events.LifecycleSubject(vm), e)
		if err != nil {
			b.Fatal(err)
		}
		msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("bench-%d-%d", round, i))
		if _, err := js.PublishMsgAsync(msg); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		b.Fatal("publishing timed out")
	}
	s, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		b.Fatal(err)
	}
	return s.CachedInfo().State.LastSeq
}

// waitAcked waits until consumer has acknowledged every message up to seq.
func waitAcked(ctx context.Context, b *testing.B, js jetstream.JetStream, consumer string, seq uint64) {
	b.Helper()
	for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if c, err := js.Consumer(ctx, events.StreamEvents, consumer); err == nil {
			if info, err := c.Info(ctx); err == nil && info.AckFloor.Stream >= seq {
				return
			}
		}
	}
	b.Fatalf("%s did not acknowledge up to %d", consumer, seq)
}

// processCPU is the CPU time the process has used, user and system.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
