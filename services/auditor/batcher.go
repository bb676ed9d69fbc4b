package auditor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/transparency-dev/tessera"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// batcher writes the log in batches for bus.ConsumeBatch (group commit):
// prepare turns each delivered message into its entry as it arrives, flush
// hands a batch to Tessera all at once, so that Tessera writes it as one
// batch, and complete waits until it is durable; the runner then
// acknowledges it. While Tessera makes one batch durable the next is
// prepared and flushed behind it (maxInflightBatches). A failed write
// stops the writer; anything a later batch sequenced past the failure is
// repaired from the tail at the next start (recover reads far enough back
// to see it).
type batcher struct {
	*writer
	cur     []item // prepared, not yet flushed
	durable int    // batches completed
	failed  error  // the first failed write; later batches are not completed
}

// item is one message, prepared for the log.
type item struct {
	seq   uint64
	entry *tessera.Entry
	span  trace.Span // nil unless the message carried a trace context
}

// pending is a batch handed to Tessera and not yet durable.
type pending struct {
	batch   []item
	futures []tessera.IndexFuture
	dups    int64
	start   time.Time
	span    trace.Span
}

// Add prepares a delivered message and raises the seen mark to it.
func (b *batcher) Add(msg jetstream.Msg, md *jetstream.MsgMetadata) {
	if md.Sequence.Stream > b.seen.Load() {
		b.seen.Store(md.Sequence.Stream)
	}
	if b.hooks.loseDelivery != nil && b.hooks.loseDelivery(md.Sequence.Stream) {
		return
	}
	if len(b.cur) == 0 {
		b.cur = make([]item, 0, b.cfg.BatchSize)
	}
	b.cur = append(b.cur, b.prepare(msg, md))
}

// Flush hands the prepared batch to Tessera; the function it returns
// completes it.
func (b *batcher) Flush(ctx context.Context) (func() error, error) {
	batch := b.cur
	b.cur = nil
	p, err := b.flush(ctx, batch)
	if err != nil {
		endSpans(batch)
		return nil, err
	}
	return func() error { return b.complete(ctx, p) }, nil
}

// drop ends what was prepared and not flushed: it is not logged, not
// acknowledged, and redelivered later.
func (b *batcher) drop() {
	endSpans(b.cur)
	b.cur = nil
}

// prepare turns a message into its log entry.
func (b *batcher) prepare(msg jetstream.Msg, md *jetstream.MsgMetadata) item {
	entry := b.encode(auditlog.Message{
		Stream: b.cfg.Stream, Seq: md.Sequence.Stream, Subject: msg.Subject(), Stored: md.Timestamp, Body: msg.Data(),
	})
	it := item{seq: md.Sequence.Stream, entry: tessera.NewEntry(entry)}
	if h := msg.Headers(); b.mayCarryTrace(h) {
		pctx := bus.ExtractTrace(context.Background(), h)
		if trace.SpanContextFromContext(pctx).IsValid() {
			_, it.span = b.tracer.Start(pctx, "auditor.log_entry", trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject()),
					attribute.Int64("messaging.message.sequence", int64(md.Sequence.Stream))))
		}
	}
	return it
}

// flush hands one batch to Tessera, in order: gap records for sequences the
// stream no longer has, then each message not yet logged.
func (b *batcher) flush(ctx context.Context, batch []item) (*pending, error) {
	p := &pending{batch: batch, futures: make([]tessera.IndexFuture, 0, len(batch)), start: time.Now()}
	_, p.span = b.tracer.Start(ctx, "auditor.append_batch", trace.WithAttributes(
		attribute.Int("vigil.audit.batch.messages", len(batch)),
		attribute.Int64("vigil.audit.batch.first_seq", int64(batch[0].seq)),
		attribute.Int64("vigil.audit.batch.last_seq", int64(batch[len(batch)-1].seq))))
	for i := range batch {
		it := &batch[i]
		if b.cov.Covered(it.seq) {
			p.dups++
			continue
		}
		for b.cov.Next() < it.seq {
			f, err := b.gap(ctx, it.seq)
			if err != nil {
				p.span.RecordError(err)
				p.span.End()
				return nil, err
			}
			p.futures = append(p.futures, f)
		}
		if b.hooks.failAdd != nil && b.hooks.failAdd(it.seq) {
			p.futures = append(p.futures, func() (tessera.Index, error) { return tessera.Index{}, errors.New("injected write failure") })
		} else {
			p.futures = append(p.futures, b.app.Add(ctx, it.entry))
		}
		if _, err := b.cov.Add(it.seq, it.seq); err != nil {
			p.span.End()
			return nil, fmt.Errorf("auditor: internal error: %w", err)
		}
	}
	return p, nil
}

// complete waits until every entry of a batch is durable. After a failed
// write it only ends the batch's spans: entries after a failed one may
// have been sequenced, so the writer stops and the next start repairs the
// log from its tail.
func (b *batcher) complete(ctx context.Context, p *pending) error {
	defer p.span.End()
	defer endSpans(p.batch)
	if b.failed != nil {
		return b.failed
	}
	var lastIdx uint64
	for _, f := range p.futures {
		idx, err := f()
		if err != nil {
			b.failed = fmt.Errorf("auditor: log write failed, stopping: %w", err)
			p.span.RecordError(b.failed)
			p.span.SetStatus(codes.Error, "log write failed")
			return b.failed
		}
		lastIdx = idx.Index
	}
	b.durable++
	if b.hooks.afterDurable != nil {
		b.hooks.afterDurable(b.durable)
	}
	p.span.SetAttributes(attribute.Int("vigil.audit.batch.entries", len(p.futures)))
	b.m.entries.Add(ctx, int64(len(p.futures)))
	if p.dups > 0 {
		b.m.duplicates.Add(ctx, p.dups)
	}
	b.m.batchSize.Record(ctx, int64(len(p.futures)))
	b.m.batchTime.Record(ctx, time.Since(p.start).Seconds())
	if len(p.futures) > 0 {
		b.m.logSize.Record(ctx, int64(lastIdx+1))
	}
	return nil
}

func endSpans(batch []item) {
	for i := range batch {
		if batch[i].span != nil {
			batch[i].span.End()
		}
	}
}
