package bus

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

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
	// Value is what the WithOrderingKey function left for the handler,
	// such as the payload it decoded to find the key; nil otherwise.
	Value any
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

// DefaultMaxDeliver is the consumer's MaxDeliver when the config leaves it 0.
// A message that failed this many deliveries is terminated as poison.
const DefaultMaxDeliver = 20

// shardQueue is how many messages wait for each handler with an ordering
// key (WithOrderingKey) before the pull loop waits for room: enough that
// one busy key rarely holds up the others.
const shardQueue = 16

// Consume creates or updates the durable pull consumer cfg on stream and
// handles its messages with bounded concurrency until ctx ends; it returns
// nil then. On return, every handler has finished; messages buffered but
// not handled are given back to the server at once.
func (c *Conn) Consume(ctx context.Context, stream string, cfg jetstream.ConsumerConfig, h Handler, opts ...ConsumeOption) error {
	o := newConsumeOptions(c, opts)
	if cfg.AckPolicy != jetstream.AckExplicitPolicy {
		return fmt.Errorf("bus: consumer %s: the runner needs AckExplicit", cfg.Durable)
	}
	cfg = o.consumeDefaults(cfg)
	cons, err := c.consumer(ctx, stream, cfg, o)
	if cons == nil {
		return err
	}
	p, err := c.pull(ctx, cons, stream, cfg.Durable, jetstream.PullMaxMessages(o.concurrency))
	if err != nil {
		return err
	}
	defer p.stop()
	r := newRunner(c, h, o, cfg.MaxDeliver, cfg.Durable)
	r.start(ctx)
	defer r.wait()
	p.run(ctx, r.dispatch)
	return nil
}

// consumeDefaults fills in what cfg leaves unset, and the in-progress
// interval from its AckWait.
func (o *consumeOptions) consumeDefaults(cfg jetstream.ConsumerConfig) jetstream.ConsumerConfig {
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
	return cfg
}

// runner hands messages to a fixed pool of handler goroutines and settles
// each (ack, nak or terminate) by its handler's result.
type runner struct {
	c          *Conn
	h          Handler
	o          consumeOptions
	maxDeliver int
	consumer   string
	// outcomes holds the metric attributes of each outcome, built once
	// instead of per message.
	outcomes map[string]metric.MeasurementOption
	// lanes lead to the handlers: one shared by all of them, or with an
	// ordering key one per handler (its shard).
	lanes    []chan delivery
	seed     maphash.Seed
	held     held
	handlers sync.WaitGroup
	idle     chan struct{} // closed when the handlers are done
	ticker   chan struct{} // closed when the in-progress ticker is done
}

// delivery is a message on its way to a handler. With an ordering key it
// is decoded on the pull loop (the key needs it), otherwise by the handler.
type delivery struct {
	msg     jetstream.Msg
	decoded bool
	m       *Message // nil without metadata
	err     error    // why it could not be decoded
}

// Outcomes of handling a message, as recorded in the bus metrics.
const (
	outcomeAck       = "ack"
	outcomeAckFailed = "ack_failed"
	outcomeNak       = "nak"
	outcomeTerm      = "term"
)

func newRunner(c *Conn, h Handler, o consumeOptions, maxDeliver int, consumer string) *runner {
	r := &runner{c: c, h: h, o: o, maxDeliver: maxDeliver, consumer: consumer, outcomes: outcomeAttrs(consumer),
		seed: maphash.MakeSeed(), held: held{msgs: map[jetstream.Msg]struct{}{}}}
	if o.key == nil {
		r.lanes = []chan delivery{make(chan delivery)}
	} else {
		r.lanes = make([]chan delivery, o.concurrency)
		for i := range r.lanes {
			r.lanes[i] = make(chan delivery, shardQueue)
		}
	}
	return r
}

func outcomeAttrs(consumer string) map[string]metric.MeasurementOption {
	m := map[string]metric.MeasurementOption{}
	for _, oc := range []string{outcomeAck, outcomeAckFailed, outcomeNak, outcomeTerm} {
		m[oc] = metric.WithAttributeSet(attribute.NewSet(attribute.String("consumer", consumer), attribute.String("outcome", oc)))
	}
	return m
}

// start starts the handlers and the in-progress ticker. A fixed pool of
// goroutines rather than one per message: a goroutine keeps the stack it
// has grown, so handlers do not pay for growing a fresh one message after
// message.
func (r *runner) start(ctx context.Context) {
	for i := range r.o.concurrency {
		lane := r.lanes[i%len(r.lanes)]
		r.handlers.Add(1)
		go func() {
			defer r.handlers.Done()
			for d := range lane {
				r.handle(ctx, d)
			}
		}()
	}
	r.idle, r.ticker = make(chan struct{}), make(chan struct{})
	go r.tick()
}

// wait closes the lanes and waits for the handlers and the ticker.
func (r *runner) wait() {
	for _, l := range r.lanes {
		close(l)
	}
	r.handlers.Wait()
	close(r.idle)
	<-r.ticker
}

// tick keeps every message the runner holds in progress: one ticker rather
// than a timer per message, as most handlers finish long before the first
// mark is due. A message is marked at least every o.inProgress until its
// handler returns, also while shutting down.
func (r *runner) tick() {
	defer close(r.ticker)
	t := time.NewTicker(r.o.inProgress)
	defer t.Stop()
	for {
		select {
		case <-r.idle:
			return
		case <-t.C:
			r.held.markInProgress()
		}
	}
}

// dispatch hands msg to a handler: to any idle one, or with an ordering
// key to its key's shard, where it waits behind the messages of that shard
// delivered before it. While shutting down, msg is given back at once, for
// another consumer or the next start, instead of after AckWait.
func (r *runner) dispatch(ctx context.Context, msg jetstream.Msg) {
	if ctx.Err() != nil {
		_ = msg.Nak()
		return
	}
	d := delivery{msg: msg}
	lane := r.lanes[0]
	if r.o.key != nil {
		d.decoded = true
		d.m, d.err = decode(msg)
		if d.err == nil {
			lane = r.lanes[maphash.String(r.seed, r.o.key(d.m))%uint64(len(r.lanes))]
		}
	}
	r.held.add(msg)
	select {
	case lane <- d:
	case <-ctx.Done():
		r.held.remove(msg)
		_ = msg.Nak()
	}
}

// decode reads msg's metadata and envelope. Without metadata it returns a
// nil Message.
func decode(msg jetstream.Msg) (*Message, error) {
	meta, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("message without metadata: %w", err)
	}
	m := &Message{Msg: msg, Meta: meta}
	if m.Envelope, err = events.Parse(msg.Data()); err != nil {
		return m, fmt.Errorf("unreadable envelope: %w", err)
	}
	return m, nil
}

// handle runs the handler on one delivery and settles the message.
func (r *runner) handle(ctx context.Context, d delivery) {
	start := time.Now()
	if !d.decoded {
		d.m, d.err = decode(d.msg)
	}
	if d.m == nil {
		r.held.remove(d.msg)
		r.c.log.ErrorContext(ctx, "message without metadata", "subject", d.msg.Subject(), "err", d.err)
		_ = d.msg.Term()
		return
	}
	m := d.m
	ctx, span := r.startSpan(ctx, m)
	defer span.End()
	outcome := outcomeAck
	defer func() {
		attrs := r.outcomes[outcome]
		r.c.metrics.handled.Add(ctx, 1, attrs)
		r.c.metrics.handleSeconds.Record(ctx, time.Since(start).Seconds(), attrs)
	}()

	err := d.err
	switch {
	case err != nil:
		err = Permanent(err)
	case ctx.Err() != nil:
		// Taken after shutdown began: not handled, given back below.
		err = ctx.Err()
	default:
		if span.IsRecording() {
			span.SetAttributes(attribute.String("messaging.message.id", m.Envelope.ID), attribute.String("cloudevents.event_type", m.Envelope.Type))
		}
		err = r.h(ctx, m)
	}
	r.held.remove(m.Msg)
	outcome = r.settle(ctx, span, m, err)
}

func (r *runner) startSpan(ctx context.Context, m *Message) (context.Context, trace.Span) {
	ctx = ExtractTrace(ctx, m.Msg.Headers())
	ctx, span := r.c.tracer.Start(ctx, "process "+m.Msg.Subject(), trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", m.Msg.Subject()),
			attribute.String("messaging.consumer.group.name", r.consumer),
			attribute.Int64("messaging.nats.stream_sequence", int64(m.Meta.Sequence.Stream)),
			attribute.Int64("messaging.nats.num_delivered", int64(m.Meta.NumDelivered)),
		)
	}
	return ctx, span
}

// settle acks, terminates or naks a handled message by its handler's
// result, and returns the outcome.
func (r *runner) settle(ctx context.Context, span trace.Span, m *Message, err error) string {
	msg, meta := m.Msg, m.Meta
	switch {
	case err == nil:
		if aerr := r.ack(ctx, msg); aerr != nil {
			r.c.log.WarnContext(ctx, "ack failed; the message will be redelivered", "subject", msg.Subject(), "seq", meta.Sequence.Stream, "err", aerr)
			return outcomeAckFailed
		}
		return outcomeAck
	case !IsPermanent(err) && ctx.Err() != nil:
		// Shutting down is not the message's fault: give it back at once,
		// like the buffered ones, so that redelivery keeps stream order.
		_ = msg.Nak()
		return outcomeNak
	case IsPermanent(err) || (r.maxDeliver > 0 && int(meta.NumDelivered) >= r.maxDeliver):
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		r.poison(actx, span, msg, meta, err)
		return outcomeTerm
	default:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		delay := r.delay(meta.NumDelivered)
		r.c.log.WarnContext(ctx, "handler failed; redelivering", "subject", msg.Subject(), "seq", meta.Sequence.Stream,
			"delivered", meta.NumDelivered, "retry_in", delay, "err", err)
		_ = msg.NakWithDelay(delay)
		return outcomeNak
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
	id := fmt.Sprintf("poison-%s-%d", meta.Stream, meta.Sequence.Stream)
	if err := r.c.PublishAlert(ctx, r.o.alertSource, id, alert); err != nil {
		r.c.log.ErrorContext(ctx, "publish poison alert", "err", err)
	}
}

// held is the set of messages the runner holds, queued for or in a
// handler, which the ticker keeps in progress.
type held struct {
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func (h *held) add(msg jetstream.Msg) {
	h.mu.Lock()
	h.msgs[msg] = struct{}{}
	h.mu.Unlock()
}

// remove comes before the message is settled: markInProgress holds the
// lock while marking, so no message is marked after its ack.
func (h *held) remove(msg jetstream.Msg) {
	h.mu.Lock()
	delete(h.msgs, msg)
	h.mu.Unlock()
}

func (h *held) markInProgress() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for msg := range h.msgs {
		_ = msg.InProgress()
	}
}
