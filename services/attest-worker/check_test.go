package attestworker

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// durable names one of the worker's durable consumers.
type durable struct{ stream, name string }

var (
	jobsConsumer     = durable{events.StreamJobs, ConsumerJobs}
	scheduleConsumer = durable{events.StreamSchedule, ConsumerSchedule}
)

// consumerInfo reads the state of the durable consumer c.
func consumerInfo(ctx context.Context, js jetstream.JetStream, c durable) (*jetstream.ConsumerInfo, error) {
	cons, err := js.Consumer(ctx, c.stream, c.name)
	if err != nil {
		return nil, err
	}
	return cons.Info(ctx)
}

// idle reports whether each of consumers has nothing left to deliver and
// nothing delivered but unacknowledged (or, when not, which is busy): the
// handlers have done all they will do for the messages stored so far.
func idle(ctx context.Context, js jetstream.JetStream, consumers ...durable) (bool, string) {
	for _, c := range consumers {
		ci, err := consumerInfo(ctx, js, c)
		if err != nil {
			return false, fmt.Sprintf("%s: %v", c.name, err)
		}
		if ci.NumPending != 0 || ci.NumAckPending != 0 {
			return false, fmt.Sprintf("%s: %d to deliver, %d unacknowledged", c.name, ci.NumPending, ci.NumAckPending)
		}
	}
	return true, ""
}

// waitIdle waits until consumers are idle at one moment.
func waitIdle(t testing.TB, ctx context.Context, js jetstream.JetStream, timeout time.Duration, consumers ...durable) {
	t.Helper()
	waitFor(t, timeout, "consumers idle", func() (bool, string) { return idle(ctx, js, consumers...) })
}

// waitSweep waits until a sweep that fired after the call has run to its
// end: the schedule consumer has acknowledged a message stored after the
// call. The caller makes sure no VM schedule fires meanwhile, so that
// message is a firing of the sweep.
func waitSweep(t testing.TB, ctx context.Context, js jetstream.JetStream, timeout time.Duration) {
	t.Helper()
	info, err := mustStream(t, js, events.StreamSchedule).Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mark := info.State.LastSeq
	waitFor(t, timeout, "a sweep", func() (bool, string) {
		ci, err := consumerInfo(ctx, js, scheduleConsumer)
		if err != nil {
			return false, err.Error()
		}
		return ci.AckFloor.Stream > mark, fmt.Sprintf("acknowledged up to %d, the sweep fires after %d", ci.AckFloor.Stream, mark)
	})
}
