package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/metric"
)

// A Batcher writes messages durably in batches, for ConsumeBatch. Add and
// Flush are called on one goroutine, in delivery order; the functions Flush
// returns are called on another, one at a time, in the order of the
// flushes, each also after an earlier batch failed.
type Batcher interface {
	// Add puts a delivered message into the current batch.
	Add(msg jetstream.Msg, meta *jetstream.MsgMetadata)
	// Flush starts writing the current batch, the messages added since
	// the last Flush, and returns a function that waits until it is
	// durable. An error from either fails the batch.
	Flush(ctx context.Context) (wait func() error, err error)
}

// inBuffer is how many pulled messages wait for the batch loop; the rest
// stay in the pull iterator's buffer.
const inBuffer = 256

// ConsumeBatch creates or updates the durable pull consumer cfg on stream
// and hands its messages to b in batches until ctx ends or a batch fails.
// A batch is flushed when it is full (WithBatch), or once no more messages
// are buffered and either the stream held none after the batch's last one
// or the batch waited long enough for them. Meanwhile the next batch
// fills: up to WithInflightBatches are being written at once.
//
// A batch is acknowledged once it and every batch before it are durable:
// with AckAll by acknowledging its last message, otherwise message by
// message, without waiting for the server's confirmation (a lost ack
// means a redelivery, which b must treat as a duplicate). A failed batch
// stops the runner: it and every batch after it are given back (nak), and
// ConsumeBatch returns the error. When ctx ends, the batches flushed so
// far complete, the current one is given back, and ConsumeBatch returns
// nil.
//
// Envelopes are not parsed: b gets every message as stored. Messages are
// not marked in progress, so the consumer's AckWait must cover a batch's
// wait and write.
func (c *Conn) ConsumeBatch(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, b Batcher, opts ...ConsumeOption) error {
	o := newConsumeOptions(c, opts)
	if cfg.AckPolicy == jetstream.AckNonePolicy {
		return fmt.Errorf("bus: consumer %s: batches need AckExplicit or AckAll", cfg.Durable)
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = (o.inflight + 3) * o.batchSize
	}
	cons, err := c.consumer(ctx, stream, cfg, o)
	if cons == nil {
		return err
	}
	pctx, stopPull := context.WithCancel(ctx)
	defer stopPull()
	p, err := c.pull(pctx, cons, stream, cfg.Durable, jetstream.PullMaxMessagesWithBytesLimit(2*o.batchSize, o.bufferedBytes))
	if err != nil {
		return err
	}
	defer p.stop()
	r := newBatchRunner(c, b, o, cfg)
	in, pulled := make(chan jetstream.Msg, inBuffer), make(chan struct{})
	go func() {
		defer close(pulled)
		p.run(pctx, func(ctx context.Context, msg jetstream.Msg) {
			select {
			case in <- msg:
			case <-ctx.Done():
				_ = msg.Nak()
			}
		})
	}()
	err = r.run(ctx, in, pulled)
	stopPull()
	<-pulled
	for len(in) > 0 {
		_ = (<-in).Nak()
	}
	return err
}

// batchRunner gathers messages into batches, hands them to the Batcher,
// and acknowledges them once durable.
type batchRunner struct {
	c        *Conn
	b        Batcher
	o        consumeOptions
	consumer string
	ackAll   bool
	outcomes map[string]metric.MeasurementOption

	cur         []jetstream.Msg // added, not yet flushed
	curStart    time.Time       // when cur's first message came
	lastPending uint64          // messages the stream held after cur's last

	room    chan struct{} // a token per batch flushed and not yet completed
	flushed chan flushed  // to the completer
	failed  chan error    // the completer's first failure, at once
	done    chan error    // the completer's first failure, when it is done
}

// flushed is a batch being written.
type flushed struct {
	msgs []jetstream.Msg
	wait func() error
}

func newBatchRunner(c *Conn, b Batcher, o consumeOptions, cfg jetstream.ConsumerConfig) *batchRunner {
	return &batchRunner{c: c, b: b, o: o, consumer: cfg.Durable, ackAll: cfg.AckPolicy == jetstream.AckAllPolicy,
		outcomes: outcomeAttrs(cfg.Durable), cur: make([]jetstream.Msg, 0, o.batchSize),
		room: make(chan struct{}, o.inflight), flushed: make(chan flushed, o.inflight),
		failed: make(chan error, 1), done: make(chan error, 1)}
}

// run gathers and flushes batches until ctx ends, the pull loop ends or a
// batch fails.
func (r *batchRunner) run(ctx context.Context, in <-chan jetstream.Msg, pulled <-chan struct{}) error {
	go r.complete(ctx)
	wait := time.NewTimer(r.o.batchWait)
	wait.Stop()
	defer wait.Stop()
	for {
		// Flush cur when there is room and cur is full or complete; a
		// partial batch that expects more of the stream waits for it.
		full := len(r.cur) >= r.o.batchSize
		ready := full
		var waited <-chan time.Time
		if !full && len(r.cur) > 0 && len(in) == 0 {
			switch left := r.o.batchWait - time.Since(r.curStart); {
			case r.lastPending == 0, left <= 0:
				ready = true
			default:
				wait.Reset(left)
				waited = wait.C
			}
		}
		var room chan<- struct{}
		if ready {
			room = r.room
		}
		next := in
		if full {
			next = nil // wait for room
		}
		select {
		case room <- struct{}{}:
			if err := r.flush(ctx); err != nil {
				return r.finish(ctx, err)
			}
		case msg := <-next:
			r.add(ctx, msg)
		case <-waited:
		case err := <-r.failed:
			return r.finish(ctx, err)
		case <-pulled:
			return r.finish(ctx, nil)
		case <-ctx.Done():
			return r.finish(ctx, nil)
		}
	}
}

// add puts msg into the current batch.
func (r *batchRunner) add(ctx context.Context, msg jetstream.Msg) {
	meta, err := msg.Metadata()
	if err != nil {
		r.c.log.ErrorContext(ctx, "message without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	if len(r.cur) == 0 {
		r.curStart = time.Now()
	}
	r.cur = append(r.cur, msg)
	r.lastPending = meta.NumPending
	r.b.Add(msg, meta)
}

// flush hands the current batch to the Batcher and its wait to the
// completer; the caller holds a room token for it.
func (r *batchRunner) flush(ctx context.Context) error {
	msgs := r.cur
	r.cur = make([]jetstream.Msg, 0, r.o.batchSize)
	wait, err := r.b.Flush(ctx)
	if err != nil {
		<-r.room
		r.giveBack(ctx, msgs)
		return err
	}
	r.flushed <- flushed{msgs: msgs, wait: wait}
	return nil
}

// finish gives the current batch back, waits for the completer, and
// returns err or else the completer's failure.
func (r *batchRunner) finish(ctx context.Context, err error) error {
	r.giveBack(ctx, r.cur)
	r.cur = nil
	close(r.flushed)
	if cerr := <-r.done; err == nil {
		err = cerr
	}
	return err
}

// complete waits for each flushed batch in turn and acknowledges it, until
// one fails; from then on it gives the batches back.
func (r *batchRunner) complete(ctx context.Context) {
	var failure error
	for f := range r.flushed {
		if err := f.wait(); err != nil && failure == nil {
			failure = err
			r.failed <- err
		}
		if failure == nil {
			r.ack(ctx, f.msgs)
		} else {
			r.giveBack(ctx, f.msgs)
		}
		<-r.room
	}
	r.done <- failure
}

// ack acknowledges a durable batch: with AckAll its last message
// acknowledges every one.
func (r *batchRunner) ack(ctx context.Context, msgs []jetstream.Msg) {
	r.c.metrics.handled.Add(ctx, int64(len(msgs)), r.outcomes[outcomeAck])
	if r.ackAll {
		msgs = msgs[len(msgs)-1:]
	}
	for _, msg := range msgs {
		if err := msg.Ack(); err != nil {
			r.c.log.WarnContext(ctx, "ack failed; the batch will be redelivered", "consumer", r.consumer, "subject", msg.Subject(), "err", err)
		}
	}
}

// giveBack naks msgs for redelivery at once.
func (r *batchRunner) giveBack(ctx context.Context, msgs []jetstream.Msg) {
	if len(msgs) == 0 {
		return
	}
	r.c.metrics.handled.Add(ctx, int64(len(msgs)), r.outcomes[outcomeNak])
	for _, msg := range msgs {
		_ = msg.Nak()
	}
}
