package ingest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// normalizer consumes VIGIL_RAW with a durable pull consumer shared by all
// replicas. Within a replica, events of one VM are applied in stream order
// (messages are routed to a worker by VM key), so a batch such as
// write+start is applied as created, then started; different VMs are
// processed in parallel. Across replicas, the inventory's compare and set
// keeps a VM from rolling back whatever the order.
type normalizer struct {
	p       *processor
	conn    *bus.Conn
	tracer  trace.Tracer
	workers int
	backoff []time.Duration
}

type rawItem struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
	raw  events.Raw
	ch   normalize.Change
	err  error // from normalisation: ignored or malformed input
}

func (n *normalizer) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "ingest: normalise raw Azure events into lifecycle events, jobs and inventory",
		FilterSubject: events.SubjectRawAll,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       60 * time.Second,
		MaxDeliver:    bus.DefaultMaxDeliver,
		MaxAckPending: 64 * n.workers,
	}
}

// run consumes until ctx ends. NATS being unreachable only delays it.
func (n *normalizer) run(ctx context.Context) error {
	var cons jetstream.Consumer
	for attempt := 0; ; attempt++ {
		var err error
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		cons, err = n.conn.JS.CreateOrUpdateConsumer(cctx, events.StreamRaw, n.consumerConfig())
		cancel()
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		d := min(time.Duration(attempt+1)*500*time.Millisecond, 5*time.Second)
		n.p.log.WarnContext(ctx, "creating the raw consumer failed; retrying", "retry_in", d, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(d):
		}
	}
	iter, err := cons.Messages(jetstream.PullMaxMessages(32 * n.workers))
	if err != nil {
		return fmt.Errorf("consume %s: %w", events.StreamRaw, err)
	}
	// On shutdown, stop pulling but hand out what is buffered, so that it can
	// be given back at once (below) rather than after AckWait.
	go func() { <-ctx.Done(); iter.Drain() }()

	shards := make([]chan rawItem, n.workers)
	var wg sync.WaitGroup
	for i := range shards {
		shards[i] = make(chan rawItem, 64)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range shards[i] {
				n.handle(ctx, it)
			}
		}()
	}
	defer func() {
		for _, s := range shards {
			close(s)
		}
		wg.Wait()
	}()
	for {
		msg, err := iter.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			if ctx.Err() != nil {
				iter.Stop()
				return nil
			}
			n.p.log.WarnContext(ctx, "raw consumer error", "err", err)
			continue
		}
		if ctx.Err() != nil {
			_ = msg.Nak() // shutting down: back to the stream for the next replica or start
			continue
		}
		it := n.decode(msg)
		h := fnv.New32a()
		h.Write([]byte(it.ch.VM.Key()))
		select {
		case shards[h.Sum32()%uint32(len(shards))] <- it:
		case <-ctx.Done():
			_ = msg.Nak()
		}
	}
}

// decode parses and normalises a raw message (cheap; done in order so that
// it can be routed by VM).
func (n *normalizer) decode(msg jetstream.Msg) rawItem {
	it := rawItem{msg: msg}
	meta, err := msg.Metadata()
	if err != nil {
		it.err = bus.Permanent(fmt.Errorf("message without metadata: %w", err))
		return it
	}
	it.meta = meta
	env, err := events.Parse(msg.Data())
	if err != nil {
		it.err = bus.Permanent(err)
		return it
	}
	if err := env.Decode(events.TypeRaw, &it.raw); err != nil {
		it.err = bus.Permanent(err)
		return it
	}
	// The event's own time was bounded when it was received; the time
	// normalisation takes from its data is bounded below.
	ev, err := eventgrid.ParseEvent(it.raw.Event, eventgrid.Limits{MaxEventBytes: len(it.raw.Event) + 1, MaxClockSkew: -1})
	if err != nil {
		it.err = bus.Permanent(fmt.Errorf("raw event %s: %w", it.raw.EventID, err))
		return it
	}
	it.ch, it.err = normalize.FromEvent(ev)
	if it.err == nil {
		if err := eventgrid.CheckTime(it.ch.OccurredAt, n.p.now(), n.p.skew); err != nil {
			it.err = fmt.Errorf("%w: event %s: %w", normalize.ErrMalformed, ev.ID, err)
		}
	}
	return it
}

func (n *normalizer) handle(ctx context.Context, it rawItem) {
	hctx := bus.ExtractTrace(ctx, it.msg.Headers())
	hctx, span := n.tracer.Start(hctx, "ingest.normalize", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.String("messaging.destination.name", it.msg.Subject()),
			attribute.String("azure.event_id", it.raw.EventID)))
	defer span.End()
	err := it.err
	switch {
	case errors.Is(err, normalize.ErrIgnored):
		n.p.m.normalized(hctx, it.raw.Source, "ignored")
		err = nil
	case errors.Is(err, normalize.ErrMalformed):
		// Bad Azure input harms nothing else: it stays on VIGIL_RAW for
		// inspection and is counted.
		n.p.m.normalized(hctx, it.raw.Source, "malformed")
		n.p.log.WarnContext(hctx, "Azure event cannot be normalised", "event_id", it.raw.EventID, "err", err)
		err = nil
	case err == nil:
		err = n.p.applyChange(hctx, it.ch, it.raw.Source)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	switch {
	case err == nil:
		if aerr := it.msg.DoubleAck(actx); aerr != nil {
			n.p.log.WarnContext(hctx, "ack failed; the raw event will be redelivered", "err", aerr)
		}
	case bus.IsPermanent(err) || (it.meta != nil && int(it.meta.NumDelivered) >= bus.DefaultMaxDeliver):
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		_ = it.msg.TermWithReason(clipReason(err.Error()))
		n.p.log.ErrorContext(hctx, "raw event terminated", "subject", it.msg.Subject(), "err", err)
		alert := events.Alert{Severity: events.SeverityHigh, Code: "bus.poison_message",
			Message: fmt.Sprintf("%s: raw event %s terminated: %v", ConsumerName, it.raw.EventID, err),
			CauseID: it.msg.Headers().Get(jetstream.MsgIDHeader)}
		if aerr := n.conn.PublishAlert(actx, ServiceName, alert); aerr != nil {
			n.p.log.ErrorContext(hctx, "publish poison alert", "err", aerr)
		}
	default:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		delivered := 1
		if it.meta != nil {
			delivered = int(it.meta.NumDelivered)
		}
		if ctx.Err() != nil {
			// Shutting down is not the event's fault: give it back at once,
			// like the buffered ones, so that a VM's events return in order.
			_ = it.msg.Nak()
			return
		}
		d := n.backoff[min(delivered-1, len(n.backoff)-1)]
		n.p.log.WarnContext(hctx, "applying a raw event failed; redelivering", "event_id", it.raw.EventID, "delivered", delivered, "retry_in", d, "err", err)
		_ = it.msg.NakWithDelay(d)
	}
}

func clipReason(s string) string {
	if len(s) > 512 {
		return s[:512]
	}
	return s
}
