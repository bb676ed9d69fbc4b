package bus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Message is one delivered event.
type Message struct {
	Envelope events.Envelope
	Msg      jetstream.Msg
	Meta     *jetstream.MsgMetadata
}

// Handler processes one message. Returning nil acks it; an error naks it
// for redelivery with backoff; an error wrapped by Permanent terminates it.
// Handlers must be idempotent: a message can be delivered more than once.
type Handler func(ctx context.Context, m *Message) error

type permanentError struct{ err error }

func (p *permanentError) Error() string { return p.err.Error() }
func (p *permanentError) Unwrap() error { return p.err }

// Permanent marks err as not worth retrying: the message is terminated and
// an alert is published about it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err was marked with Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// ConsumeOption configures Consume.
type ConsumeOption func(*consumeOptions)

type consumeOptions struct {
	concurrency int
	backoff     []time.Duration
	inProgress  time.Duration
	alertSource string
	ackNoWait   bool
}

// WithConcurrency bounds the number of messages handled at once (default 16).
// It is also the number of messages buffered from the server.
func WithConcurrency(n int) ConsumeOption {
	return func(o *consumeOptions) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// WithBackoff sets the redelivery delays after a handler error: the n-th
// failed delivery waits ds[n-1], the last value repeating. The default is
// 250 ms, 1 s, 5 s, 15 s, 30 s.
func WithBackoff(ds ...time.Duration) ConsumeOption {
	return func(o *consumeOptions) {
		if len(ds) > 0 {
			o.backoff = ds
		}
	}
}

// WithInProgress sets how often a running handler's message is marked in
// progress so that the server does not redeliver it (default a third of the
// consumer's AckWait).
func WithInProgress(interval time.Duration) ConsumeOption {
	return func(o *consumeOptions) { o.inProgress = interval }
}

// WithAckNoWait sends a handler's acknowledgement without waiting for the
// server to confirm it (the default waits). The ack still goes out only
// after the handler returned nil, that is after its durable work; what is
// given up is learning that the ack was lost (a connection dropped at that
// moment), which leads to a redelivery after AckWait. Use it for handlers
// that treat a redelivery of a completed message as cheap and harmless: it
// saves the confirmation's round trip on every message.
func WithAckNoWait() ConsumeOption {
	return func(o *consumeOptions) { o.ackNoWait = true }
}

// WithAlertSource names the service in poison-message alerts.
func WithAlertSource(name string) ConsumeOption {
	return func(o *consumeOptions) { o.alertSource = name }
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

// DefaultMaxDeliver is the consumer's MaxDeliver when the config leaves it 0.
// A message that failed this many deliveries is terminated as poison.
const DefaultMaxDeliver = 20

// Consume creates or updates the durable pull consumer cfg on stream and
// handles its messages with bounded concurrency until ctx ends. On return,
// every handler has finished; messages buffered but not handled are
// redelivered by the server after AckWait.
func (c *Conn) Consume(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, h Handler, opts ...ConsumeOption) error {
	o := consumeOptions{
		concurrency: 16,
		backoff:     []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second},
		alertSource: c.cfg.Name,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.AckPolicy == jetstream.AckNonePolicy || cfg.AckPolicy == jetstream.AckAllPolicy {
		return fmt.Errorf("bus: consumer %s: the runner needs AckExplicit", cfg.Durable)
	}
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	if cfg.MaxDeliver == 0 {
		cfg.MaxDeliver = DefaultMaxDeliver
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 30 * time.Second
	}
	if cfg.MaxAckPending == 0 {
		cfg.MaxAckPending = max(1000, 4*o.concurrency)
	}
	if o.inProgress <= 0 {
		o.inProgress = cfg.AckWait / 3
	}
	if o.alertSource == "" {
		o.alertSource = "vigil"
	}
	cons, err := c.JS.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		return fmt.Errorf("bus: consumer %s on %s: %w", cfg.Durable, stream, err)
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(o.concurrency), jetstream.PullHeartbeat(pullHeartbeat))
	if err != nil {
		return fmt.Errorf("bus: consume %s on %s: %w", cfg.Durable, stream, err)
	}
	stopped := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			// Stop pulling, but hand out what is buffered so that it can
			// be given back at once (below) instead of after AckWait.
			iter.Drain()
		case <-stopped:
			iter.Stop()
		}
	}()
	defer close(stopped)

	r := newRunner(c, h, o, cfg.MaxDeliver, cfg.Durable)
	// A fixed pool of handler goroutines rather than one per message: a
	// goroutine keeps the stack it has grown, so handlers do not pay for
	// growing a fresh one message after message. The unbuffered channel
	// hands a message over only to an idle handler, so at most
	// o.concurrency messages are in hand.
	msgs := make(chan jetstream.Msg)
	slots := make([]inHand, o.concurrency)
	var handlers sync.WaitGroup
	for i := range o.concurrency {
		handlers.Add(1)
		go func() {
			defer handlers.Done()
			for msg := range msgs {
				r.handle(ctx, msg, &slots[i])
			}
		}()
	}
	// One ticker keeps every message in hand in progress, rather than a
	// timer per message: most handlers finish long before the first mark
	// is due. A message is marked at least every o.inProgress, until its
	// handler returns, also while shutting down.
	idle, tickerDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(tickerDone)
		t := time.NewTicker(r.o.inProgress)
		defer t.Stop()
		for {
			select {
			case <-idle:
				return
			case <-t.C:
				for i := range slots {
					slots[i].markInProgress()
				}
			}
		}
	}()
	defer func() {
		close(msgs)
		handlers.Wait()
		close(idle)
		<-tickerDone
	}()
	// While messages come, Next waits at most pullRecheck, so that a pull
	// the iterator skipped is sent at once (see pullRecheck); after
	// pullIdle without one it waits without limit again, so that the
	// iterator's own check for missing heartbeats (a pull request the
	// server lost) can run: it only fires inside one Next call.
	var idleFor time.Duration
	for {
		var msg jetstream.Msg
		var err error
		if idleFor < pullIdle {
			msg, err = iter.Next(jetstream.NextMaxWait(pullRecheck))
			if errors.Is(err, nats.ErrTimeout) {
				idleFor += pullRecheck
				continue
			}
		} else {
			msg, err = iter.Next()
		}
		idleFor = 0
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if ctx.Err() != nil {
				iter.Stop()
				return nil
			}
			c.log.WarnContext(ctx, "consumer error", "consumer", cfg.Durable, "stream", stream, "err", err)
			continue
		}
		if ctx.Err() != nil {
			// Shutting down: give the message back for another consumer
			// (or the next start) without waiting for AckWait.
			_ = msg.Nak()
			continue
		}
		select {
		case msgs <- msg:
		case <-ctx.Done():
			_ = msg.Nak()
		}
	}
}

type runner struct {
	c          *Conn
	h          Handler
	o          consumeOptions
	maxDeliver int
	consumer   string
	// outcomes holds the metric attributes of each outcome, built once
	// instead of per message.
	outcomes map[string]metric.MeasurementOption
}

// Outcomes of handling a message, as recorded in the bus metrics.
const (
	outcomeAck       = "ack"
	outcomeAckFailed = "ack_failed"
	outcomeNak       = "nak"
	outcomeTerm      = "term"
)

func newRunner(c *Conn, h Handler, o consumeOptions, maxDeliver int, consumer string) *runner {
	r := &runner{c: c, h: h, o: o, maxDeliver: maxDeliver, consumer: consumer, outcomes: map[string]metric.MeasurementOption{}}
	for _, oc := range []string{outcomeAck, outcomeAckFailed, outcomeNak, outcomeTerm} {
		r.outcomes[oc] = metric.WithAttributeSet(attribute.NewSet(attribute.String("consumer", consumer), attribute.String("outcome", oc)))
	}
	return r
}

// inHand is the message one handler goroutine is working on.
type inHand struct {
	mu  sync.Mutex
	msg jetstream.Msg // nil while idle
}

func (h *inHand) set(msg jetstream.Msg) {
	h.mu.Lock()
	h.msg = msg
	h.mu.Unlock()
}

// markInProgress marks the message in hand, if any, in progress. It holds
// the lock while doing so, so a message is never marked after set(nil),
// which comes before its ack.
func (h *inHand) markInProgress() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.msg != nil {
		_ = h.msg.InProgress()
	}
}

func (r *runner) handle(ctx context.Context, msg jetstream.Msg, slot *inHand) {
	start := time.Now()
	meta, err := msg.Metadata()
	if err != nil {
		r.c.log.ErrorContext(ctx, "message without metadata", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	ctx = ExtractTrace(ctx, msg.Headers())
	ctx, span := r.c.tracer.Start(ctx, "process "+msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer))
	defer span.End()
	recording := span.IsRecording()
	if recording {
		span.SetAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", msg.Subject()),
			attribute.String("messaging.consumer.group.name", r.consumer),
			attribute.Int64("messaging.nats.stream_sequence", int64(meta.Sequence.Stream)),
			attribute.Int64("messaging.nats.num_delivered", int64(meta.NumDelivered)),
		)
	}

	outcome := outcomeAck
	defer func() {
		attrs := r.outcomes[outcome]
		r.c.metrics.handled.Add(ctx, 1, attrs)
		r.c.metrics.handleSeconds.Record(ctx, time.Since(start).Seconds(), attrs)
	}()

	env, err := events.Parse(msg.Data())
	if err != nil {
		outcome = outcomeTerm
		r.poison(ctx, span, msg, meta, fmt.Errorf("unreadable envelope: %w", err))
		return
	}
	if recording {
		span.SetAttributes(attribute.String("messaging.message.id", env.ID), attribute.String("cloudevents.event_type", env.Type))
	}

	slot.set(msg)
	err = r.h(ctx, &Message{Envelope: env, Msg: msg, Meta: meta})
	slot.set(nil)

	switch {
	case err == nil:
		if aerr := r.ack(ctx, msg); aerr != nil {
			outcome = outcomeAckFailed
			r.c.log.WarnContext(ctx, "ack failed; the message will be redelivered", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "err", aerr)
		}
	case IsPermanent(err) || (r.maxDeliver > 0 && int(meta.NumDelivered) >= r.maxDeliver):
		outcome = outcomeTerm
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		r.poison(actx, span, msg, meta, err)
	case ctx.Err() != nil:
		// Shutting down is not the message's fault: give it back at once,
		// like the buffered ones, so that redelivery keeps stream order.
		outcome = outcomeNak
		_ = msg.Nak()
	default:
		outcome = outcomeNak
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		delay := r.delay(meta.NumDelivered)
		r.c.log.WarnContext(ctx, "handler failed; redelivering", "subject", msg.Subject(), "seq", meta.Sequence.Stream,
			"delivered", meta.NumDelivered, "retry_in", delay, "err", err)
		_ = msg.NakWithDelay(delay)
	}
}

// ack acknowledges msg, waiting for the server's confirmation unless
// WithAckNoWait was given. It acknowledges even when ctx was cancelled
// while the handler finished its durable work: otherwise the message would
// be redelivered needlessly.
func (r *runner) ack(ctx context.Context, msg jetstream.Msg) error {
	if r.o.ackNoWait {
		return msg.Ack()
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return msg.DoubleAck(actx)
}

func (r *runner) delay(delivered uint64) time.Duration {
	i := int(delivered) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(r.o.backoff) {
		i = len(r.o.backoff) - 1
	}
	return r.o.backoff[i]
}

// poison terminates msg and raises an alert about it.
func (r *runner) poison(ctx context.Context, span trace.Span, msg jetstream.Msg, meta *jetstream.MsgMetadata, cause error) {
	span.RecordError(cause)
	span.SetStatus(codes.Error, "poison message: "+cause.Error())
	reason := fmt.Sprintf("poison after %d deliveries: %v", meta.NumDelivered, cause)
	if len(reason) > 512 {
		reason = reason[:512]
	}
	if err := msg.TermWithReason(reason); err != nil {
		r.c.log.ErrorContext(ctx, "terminate poison message", "subject", msg.Subject(), "err", err)
	}
	r.c.log.ErrorContext(ctx, "poison message terminated", "subject", msg.Subject(), "stream", meta.Stream,
		"seq", meta.Sequence.Stream, "delivered", meta.NumDelivered, "err", cause)
	alert := events.Alert{
		Severity: events.SeverityHigh,
		Code:     "bus.poison_message",
		VMKey:    events.VMFromSubject(msg.Subject()),
		Message: fmt.Sprintf("%s: message %s seq %d on %s terminated after %d deliveries: %v",
			r.consumer, meta.Stream, meta.Sequence.Stream, msg.Subject(), meta.NumDelivered, cause),
		CauseID: msg.Headers().Get(HeaderMsgID),
	}
	if err := r.c.PublishAlert(ctx, r.o.alertSource, alert); err != nil {
		r.c.log.ErrorContext(ctx, "publish poison alert", "err", err)
	}
}
