package bus

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// consumer creates the durable consumer cfg on stream: it creates or
// updates it, or deletes and creates it (WithRecreate), retrying while that
// fails (WithRetryCreate). It returns a nil consumer and nil error when ctx
// ended first.
func (c *Conn) consumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, o consumeOptions) (jetstream.Consumer, error) {
	for attempt := 1; ; attempt++ {
		cons, err := c.createConsumer(ctx, stream, cfg, o.recreate)
		switch {
		case err == nil:
			return cons, nil
		case ctx.Err() != nil:
			return nil, nil
		case !o.retryCreate:
			return nil, err
		}
		d := min(time.Duration(attempt)*500*time.Millisecond, 5*time.Second)
		c.log.WarnContext(ctx, "creating the consumer failed; retrying", "consumer", cfg.Durable, "stream", stream, "retry_in", d, "err", err)
		select {
		case <-ctx.Done():
			return nil, nil
		case <-time.After(d):
		}
	}
}

func (c *Conn) createConsumer(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, recreate bool) (jetstream.Consumer, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if !recreate {
		cons, err := c.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
		if err != nil {
			return nil, fmt.Errorf("bus: consumer %s on %s: %w", cfg.Durable, stream, err)
		}
		return cons, nil
	}
	if err := c.JS.DeleteConsumer(ctx, stream, cfg.Durable); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("bus: delete consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	cons, err := c.JS.CreateConsumer(ctx, stream, cfg)
	if err != nil {
		return nil, fmt.Errorf("bus: create consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	return cons, nil
}

// pullRecheck bounds how long the runner waits in the pull iterator's Next
// after a message, and pullIdle is how long it keeps doing so when no
// message comes. It works around a race in nats.go's jetstream pull
// iterator (Messages; seen in v1.55.0): Next decides whether to send the
// next pull request (checkPending) only when it is entered and when
// something arrives on the subscription, and it skips the request while
// the previous one is still being published (fetchInProgress, set by the
// pullMessages goroutine from before PublishRequest until after it
// returns). When that goroutine is held up after publishing and before it
// clears the flag (it has to run again, for instance after handing the
// contended connection lock over), the server can deliver every message
// asked for and the runner consume them all in the meantime: each
// checkPending skips the pull, nothing is outstanding any more, and Next
// blocks with no pull request on the server (NumWaiting 0, NumPending > 0,
// NumAckPending 0) until its missing-heartbeat timer fires after twice the
// heartbeat (30 s with the client's default; seen as 30 s stalls of the
// attest-worker's schedule consumer in BenchmarkAttestPipeline). Entering
// Next again runs checkPending, which then sends the skipped pull: so the
// runner leaves Next after pullRecheck without a message and enters it
// again. This is inferred from the iterator's code and the consumer's
// state during a stall; the skipped pull itself was not traced.
//
// pullHeartbeat is the idle heartbeat asked of the server (the client's
// default is half the 30 s expiry): the iterator gives up on a pull request
// that the server no longer holds after two missed heartbeats, which is
// the fallback for a pull lost otherwise.
const (
	pullRecheck   = 100 * time.Millisecond
	pullIdle      = time.Second
	pullHeartbeat = 5 * time.Second
)

// puller is the pull iterator of one consumer, read by one goroutine.
type puller struct {
	c        *Conn
	iter     jetstream.MessagesContext
	stream   string
	consumer string
	idleFor  time.Duration // since the last message, in Next calls that timed out
	stopped  chan struct{}
}

// pull starts pulling cons's messages. When ctx ends, the iterator stops
// pulling but still hands out what it buffered (so that it can be given
// back at once rather than after AckWait), then closes.
func (c *Conn) pull(ctx context.Context, cons jetstream.Consumer, stream, consumer string, opts ...jetstream.PullMessagesOpt) (*puller, error) {
	iter, err := cons.Messages(append(opts, jetstream.PullHeartbeat(pullHeartbeat))...)
	if err != nil {
		return nil, fmt.Errorf("bus: consume %s on %s: %w", consumer, stream, err)
	}
	p := &puller{c: c, iter: iter, stream: stream, consumer: consumer, stopped: make(chan struct{})}
	go func() {
		select {
		case <-ctx.Done():
			iter.Drain()
		case <-p.stopped:
			iter.Stop()
		}
	}()
	return p, nil
}

// stop stops the iterator; the puller is not used after.
func (p *puller) stop() { close(p.stopped) }

// run hands every message to dispatch until the iterator closes.
func (p *puller) run(ctx context.Context, dispatch func(context.Context, jetstream.Msg)) {
	for {
		msg, ok := p.next(ctx)
		if !ok {
			return
		}
		if msg != nil {
			dispatch(ctx, msg)
		}
	}
}

// next returns the next message, or nil after an error (logged) or when
// none came within pullRecheck; ok is false once the iterator is closed.
// While messages come, Next waits at most pullRecheck, so that a pull the
// iterator skipped is sent at once (see pullRecheck); after pullIdle
// without one it waits without limit again, so that the iterator's own
// check for missing heartbeats (a pull request the server lost) can run:
// it only fires inside one Next call.
func (p *puller) next(ctx context.Context) (msg jetstream.Msg, ok bool) {
	var err error
	if p.idleFor < pullIdle {
		msg, err = p.iter.Next(jetstream.NextMaxWait(pullRecheck))
		if errors.Is(err, nats.ErrTimeout) {
			p.idleFor += pullRecheck
			return nil, true
		}
	} else {
		msg, err = p.iter.Next()
	}
	p.idleFor = 0
	switch {
	case err == nil:
		return msg, true
	case errors.Is(err, jetstream.ErrMsgIteratorClosed):
		return nil, false
	case ctx.Err() != nil:
		p.iter.Stop()
		return nil, false
	}
	p.c.log.WarnContext(ctx, "consumer error", "consumer", p.consumer, "stream", p.stream, "err", err)
	return nil, true
}
