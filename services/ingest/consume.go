package ingest

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// normalizer consumes VIGIL_RAW with a durable pull consumer shared by all
// replicas. Within a replica, events of one VM are applied in stream order
// (the VM key is the runner's ordering key), so a batch such as
// write+start is applied as created, then started; different VMs are
// processed in parallel. Across replicas, the inventory's compare and set
// keeps a VM from rolling back whatever the order.
type normalizer struct {
	p       *processor
	conn    *bus.Conn
	tracer  trace.Tracer
	workers int
}

// rawItem is a raw event as normalisation left it.
type rawItem struct {
	raw events.Raw
	ch  normalize.Change
	err error // ignored or malformed input, or a permanent decoding error
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
	return n.conn.Consume(ctx, events.StreamRaw, n.consumerConfig(), n.handle,
		bus.WithConcurrency(n.workers), bus.WithOrderingKey(n.key), bus.WithRetryCreate(), bus.WithAlertSource(ServiceName))
}

// key normalises m, in delivery order, and returns its VM key; the
// normalised event is m.Value for handle.
func (n *normalizer) key(m *bus.Message) string {
	it := n.decode(m.Envelope)
	m.Value = it
	return it.ch.VM.Key()
}

// decode decodes and normalises a raw event.
func (n *normalizer) decode(env events.Envelope) rawItem {
	var it rawItem
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

// handle applies a normalised event. Ignored and malformed events are
// counted and acknowledged: bad Azure input harms nothing else, and stays
// on VIGIL_RAW for inspection.
func (n *normalizer) handle(ctx context.Context, m *bus.Message) error {
	it := m.Value.(rawItem)
	ctx, span := n.tracer.Start(ctx, "ingest.normalize", trace.WithAttributes(attribute.String("azure.event_id", it.raw.EventID)))
	defer span.End()
	switch {
	case errors.Is(it.err, normalize.ErrIgnored):
		n.p.m.normalized(ctx, it.raw.Source, "ignored")
		return nil
	case errors.Is(it.err, normalize.ErrMalformed):
		n.p.m.normalized(ctx, it.raw.Source, "malformed")
		n.p.log.WarnContext(ctx, "Azure event cannot be normalised", "event_id", it.raw.EventID, "err", it.err)
		return nil
	case it.err != nil:
		return it.err
	}
	return n.p.applyChange(ctx, it.ch, it.raw.Source)
}
