package auditor

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/client"
	"github.com/transparency-dev/tessera/storage/posix"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

const (
	instrumentation = "github.com/vigil-cc/vigil/services/auditor"
	// tesseraMaxAge is how long Tessera holds entries before sequencing
	// them when fewer than BatchSize are queued. The auditor hands Tessera
	// a whole batch at once; the age must comfortably exceed the time that
	// takes, or Tessera cuts the batch into several small writes, each
	// paying the full fsync cost. It adds at most this much latency to an
	// entry under light load (checkpoints come every second anyway).
	tesseraMaxAge = 50 * time.Millisecond
	// maxBufferedBytes bounds the messages pulled ahead of the writer.
	maxBufferedBytes = 64 << 20
	// maxInflightBatches is how many batches may be handed to Tessera
	// before the oldest is durable.
	maxInflightBatches = 2
	// maxBatchWait is how long a partial batch waits for the messages the
	// stream still holds (while the auditor catches up) before it is
	// written anyway.
	maxBatchWait = 100 * time.Millisecond
	// entryBlockSize is the size of the blocks entries are encoded into.
	entryBlockSize = 256 << 10
	// shutdownTimeout bounds the wait for the last checkpoint at shutdown.
	shutdownTimeout = 30 * time.Second
)

// delivery is one message as the consumer delivered it, with its metadata.
type delivery struct {
	msg jetstream.Msg
	md  *jetstream.MsgMetadata
	err error // from Metadata
}

// item is one message, prepared for the log.
type item struct {
	msg     jetstream.Msg
	seq     uint64
	pending uint64 // messages the stream held for the consumer after this one
	entry   *tessera.Entry
	span    trace.Span // nil unless the message carried a trace context
}

type writer struct {
	cfg    Config
	log    *slog.Logger
	js     jetstream.JetStream
	stream jetstream.Stream
	app    *tessera.Appender
	lr     tessera.LogReader
	cov    *auditlog.Coverage
	tracer trace.Tracer
	m      *metrics
	batch  int
	block  []byte // where entries are encoded; see encode
	// traceFields are the header names the trace propagator reads.
	traceFields []string
	// seen is the highest stream sequence logged or delivered; after
	// start only the consumer's callback writes it.
	seen atomic.Uint64
	// losses are sequences the stream lost before they were logged, for
	// the stream checks to alert on.
	losses *lossQueue
}

type metrics struct {
	entries     metric.Int64Counter
	duplicates  metric.Int64Counter
	batchSize   metric.Int64Histogram
	batchTime   metric.Float64Histogram
	logSize     metric.Int64Gauge
	checkpoints metric.Int64Counter
	alerts      metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) *metrics {
	m := mp.Meter(instrumentation)
	var ms metrics
	ms.entries, _ = m.Int64Counter("vigil.auditor.entries", metric.WithDescription("Entries durably appended to the audit log"), metric.WithUnit("{entry}"))
	ms.duplicates, _ = m.Int64Counter("vigil.auditor.duplicates", metric.WithDescription("Redelivered messages skipped because they were already logged"), metric.WithUnit("{message}"))
	ms.batchSize, _ = m.Int64Histogram("vigil.auditor.batch.size", metric.WithDescription("Entries per durable batch"), metric.WithUnit("{entry}"))
	ms.batchTime, _ = m.Float64Histogram("vigil.auditor.batch.duration", metric.WithDescription("Time to make a batch durable"), metric.WithUnit("s"))
	ms.logSize, _ = m.Int64Gauge("vigil.auditor.log.size", metric.WithDescription("Entries in the audit log"), metric.WithUnit("{entry}"))
	ms.checkpoints, _ = m.Int64Counter("vigil.auditor.checkpoints.published", metric.WithDescription("Checkpoints published on vigil.audit.checkpoint"), metric.WithUnit("{checkpoint}"))
	ms.alerts, _ = m.Int64Counter("vigil.auditor.alerts", metric.WithDescription("Critical alerts raised about lost checkpoints or events"), metric.WithUnit("{alert}"))
	return &ms
}

// runWriter writes the log while this process holds the writer lock.
func runWriter(ctx context.Context, cfg Config, svc *service.Service, log *slog.Logger, signer note.Signer) (err error) {
	js, tp, mp := svc.Conn.JS, svc.TracerProvider, svc.MeterProvider
	// Tessera's background work must outlive ctx until it is shut down,
	// so that everything handed to it is integrated and checkpointed.
	appCtx, cancelApp := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApp()
	driver, err := posix.New(appCtx, posix.Config{Path: cfg.LogDir})
	if err != nil {
		return fmt.Errorf("auditor: tessera storage: %w", err)
	}
	opts := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithCheckpointInterval(cfg.CheckpointInterval).
		WithBatching(uint(cfg.BatchSize), tesseraMaxAge)
	app, shutdown, lr, err := tessera.NewAppender(appCtx, driver, opts)
	if err != nil {
		return fmt.Errorf("auditor: tessera appender: %w", err)
	}
	w := &writer{cfg: cfg, log: log, js: js, app: app, lr: lr, tracer: tp.Tracer(instrumentation), m: newMetrics(mp),
		traceFields: otel.GetTextMapPropagator().Fields(), losses: newLossQueue()}
	if len(w.traceFields) == 0 {
		// bus.ExtractTrace then uses W3C trace context and baggage.
		w.traceFields = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}).Fields()
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if serr := shutdown(sctx); serr != nil {
			log.Error("tessera shutdown", "error", serr)
			if err == nil {
				err = fmt.Errorf("auditor: tessera shutdown: %w", serr)
			}
		}
		w.publishCheckpoint(sctx, nil)
	}()

	if w.stream, err = js.Stream(ctx, cfg.Stream); err != nil {
		return ignoreCancel(ctx, fmt.Errorf("auditor: stream %s: %w", cfg.Stream, err))
	}
	if err := w.recover(ctx); err != nil {
		return ignoreCancel(ctx, err)
	}
	cons, err := w.recreateConsumer(ctx)
	if err != nil {
		return ignoreCancel(ctx, err)
	}

	msgs := make(chan delivery, 2*cfg.BatchSize)
	stop := make(chan struct{})
	fatal := make(chan error, 1)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		d := delivery{msg: msg}
		if d.md, d.err = msg.Metadata(); d.err == nil && d.md.Sequence.Stream > w.seen.Load() {
			w.seen.Store(d.md.Sequence.Stream)
		}
		select {
		case msgs <- d:
		case <-stop:
		}
	},
		jetstream.PullMaxMessagesWithBytesLimit(2*cfg.BatchSize, maxBufferedBytes),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			log.Warn("consume", "error", err)
		}))
	if err != nil {
		return ignoreCancel(ctx, fmt.Errorf("auditor: consume: %w", err))
	}
	var pubWG sync.WaitGroup
	pubCtx, stopPub := context.WithCancel(ctx)
	pubWG.Add(2)
	go func() {
		defer pubWG.Done()
		w.publishLoop(pubCtx)
	}()
	go func() {
		defer pubWG.Done()
		w.checkLoop(pubCtx)
	}()
	defer func() {
		close(stop)
		cc.Stop()
		stopPub()
		pubWG.Wait()
	}()

	// Group commit: messages are prepared as they arrive into the next
	// batch while Tessera makes the previous ones durable. A batch is
	// handed to Tessera, all at once so that Tessera writes it as one
	// batch, when it is full, or when no more messages are waiting: none
	// here and, by the last delivery, none in the stream either (while
	// catching up, a partial batch waits up to maxBatchWait for the rest,
	// rather than costing a write of its own). At most maxInflightBatches
	// are handed to Tessera and not yet durable: one being written, the
	// next queued behind it. The completer acknowledges each batch (one
	// AckAll ack) once every entry in it is durable. A failed write stops
	// the writer; anything a later batch sequenced past the failure is
	// repaired from the tail at the next start (recover reads far enough
	// back to see it).
	inflight := make(chan *pending, maxInflightBatches)
	var durable atomic.Int64 // batches completed
	progress := make(chan struct{}, 1)
	completed := make(chan error, 1)
	go func() {
		var err error
		for p := range inflight {
			if err == nil {
				if err = w.complete(ctx, p); err != nil {
					select {
					case fatal <- err: // stop adding batches
					default:
					}
				}
			} else {
				endSpans(p.batch)
				p.span.End()
			}
			durable.Add(1)
			select {
			case progress <- struct{}{}:
			default:
			}
		}
		completed <- err
	}()
	var (
		cur      = make([]item, 0, cfg.BatchSize) // prepared, not yet handed to Tessera
		curStart time.Time                        // when cur's first message arrived
		handed   int64
		wait     = time.NewTimer(maxBatchWait)
	)
	wait.Stop()
	defer wait.Stop()
	finish := func(err error) error {
		endSpans(cur) // not logged, not acknowledged: redelivered later
		close(inflight)
		if cerr := <-completed; err == nil {
			err = cerr
		}
		return err
	}
	for {
		// Hand cur to Tessera when there is room and cur is full or
		// complete; a partial batch that expects more of the stream waits
		// for it (see maxBatchWait).
		full := len(cur) >= cfg.BatchSize
		ready := full
		var waited <-chan time.Time
		if !full && len(cur) > 0 && len(msgs) == 0 {
			switch left := maxBatchWait - time.Since(curStart); {
			case cur[len(cur)-1].pending == 0, left <= 0:
				ready = true
			default:
				wait.Reset(left)
				waited = wait.C
			}
		}
		if ready && handed-durable.Load() < maxInflightBatches {
			p, err := w.add(ctx, cur)
			if err != nil {
				return finish(err)
			}
			handed++
			inflight <- p
			cur = make([]item, 0, cfg.BatchSize)
			continue
		}
		next := msgs
		if full {
			next = nil // wait for Tessera
		}
		select {
		case <-ctx.Done():
			return finish(nil)
		case err := <-fatal:
			return finish(err)
		case <-progress:
		case <-waited:
		case m := <-next:
			it, err := w.prepare(m)
			if err != nil {
				return finish(err)
			}
			if len(cur) == 0 {
				curStart = time.Now()
			}
			cur = append(cur, it)
		}
	}
}

func endSpans(batch []item) {
	for i := range batch {
		if batch[i].span != nil {
			batch[i].span.End()
		}
	}
}

func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// prepare turns a message into its log entry.
func (w *writer) prepare(d delivery) (item, error) {
	msg, md := d.msg, d.md
	if d.err != nil {
		return item{}, fmt.Errorf("auditor: message metadata: %w", d.err)
	}
	entry := w.encode(auditlog.Message{
		Stream: w.cfg.Stream, Seq: md.Sequence.Stream, Subject: msg.Subject(), Stored: md.Timestamp, Body: msg.Data(),
	})
	it := item{msg: msg, seq: md.Sequence.Stream, pending: md.NumPending, entry: tessera.NewEntry(entry)}
	if h := msg.Headers(); w.mayCarryTrace(h) {
		pctx := bus.ExtractTrace(context.Background(), h)
		if trace.SpanContextFromContext(pctx).IsValid() {
			_, it.span = w.tracer.Start(pctx, "auditor.log_entry", trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.destination.name", msg.Subject()),
					attribute.Int64("messaging.message.sequence", int64(md.Sequence.Stream))))
		}
	}
	return it, nil
}

// mayCarryTrace reports whether h has a header the trace propagator reads
// (names matched without regard to case, as bus.ExtractTrace does), so that
// messages without a trace context skip the extraction.
func (w *writer) mayCarryTrace(h nats.Header) bool {
	for k := range h {
		for _, f := range w.traceFields {
			if strings.EqualFold(k, f) {
				return true
			}
		}
	}
	return false
}

// encode returns the log entry for a message, carved out of a larger block
// shared with the entries before and after it: one allocation for many
// entries, all released together once Tessera wrote them.
func (w *writer) encode(m auditlog.Message) []byte {
	if need := 256 + len(m.Stream) + len(m.Subject) + len(m.Body); cap(w.block)-len(w.block) < need {
		w.block = make([]byte, 0, max(entryBlockSize, need))
	}
	start := len(w.block)
	b := auditlog.AppendMessage(w.block, m)
	if len(b) > cap(w.block) {
		// It did not fit (canonical JSON can be longer than its input):
		// give the entry an array of its own, without the block's copy.
		e := bytes.Clone(b[start:])
		return e[:len(e):len(e)]
	}
	w.block = b
	return b[start:len(b):len(b)]
}

// pending is a batch handed to Tessera and not yet durable.
type pending struct {
	batch   []item
	futures []tessera.IndexFuture
	dups    int64
	start   time.Time
	span    trace.Span
}

// add hands one batch to Tessera, in order: gap records for sequences the
// stream no longer has, then each message not yet logged.
func (w *writer) add(ctx context.Context, batch []item) (*pending, error) {
	p := &pending{batch: batch, futures: make([]tessera.IndexFuture, 0, len(batch)), start: time.Now()}
	_, p.span = w.tracer.Start(ctx, "auditor.append_batch", trace.WithAttributes(
		attribute.Int("vigil.audit.batch.messages", len(batch)),
		attribute.Int64("vigil.audit.batch.first_seq", int64(batch[0].seq)),
		attribute.Int64("vigil.audit.batch.last_seq", int64(batch[len(batch)-1].seq))))
	for i := range batch {
		it := &batch[i]
		if w.cov.Covered(it.seq) {
			p.dups++
			continue
		}
		for w.cov.Next() < it.seq {
			f, err := w.gap(ctx, it.seq)
			if err != nil {
				p.span.RecordError(err)
				p.span.End()
				return nil, err
			}
			p.futures = append(p.futures, f)
		}
		if w.cfg.failAdd != nil && w.cfg.failAdd(it.seq) {
			p.futures = append(p.futures, func() (tessera.Index, error) { return tessera.Index{}, errors.New("injected write failure") })
		} else {
			p.futures = append(p.futures, w.app.Add(ctx, it.entry))
		}
		if _, err := w.cov.Add(it.seq, it.seq); err != nil {
			p.span.End()
			return nil, fmt.Errorf("auditor: internal error: %w", err)
		}
	}
	return p, nil
}

// complete waits until every entry of a batch is durable, then
// acknowledges the batch.
func (w *writer) complete(ctx context.Context, p *pending) error {
	defer p.span.End()
	var lastIdx uint64
	for _, f := range p.futures {
		idx, err := f()
		if err != nil {
			// Entries after a failed one may have been sequenced; stop
			// writing so that the next start repairs the log from its tail.
			err = fmt.Errorf("auditor: log write failed, stopping: %w", err)
			p.span.RecordError(err)
			p.span.SetStatus(codes.Error, "log write failed")
			endSpans(p.batch)
			return err
		}
		lastIdx = idx.Index
	}
	w.batch++
	if w.cfg.afterDurable != nil {
		w.cfg.afterDurable(w.batch)
	}
	// AckAll: acknowledging the batch's last delivery acknowledges every
	// earlier one, all of which are now durable (or were already logged).
	last := p.batch[len(p.batch)-1]
	if err := last.msg.Ack(); err != nil {
		w.log.Warn("ack", "seq", last.seq, "error", err)
	}
	endSpans(p.batch)
	p.span.SetAttributes(attribute.Int("vigil.audit.batch.entries", len(p.futures)))
	w.m.entries.Add(ctx, int64(len(p.futures)))
	if p.dups > 0 {
		w.m.duplicates.Add(ctx, p.dups)
	}
	w.m.batchSize.Record(ctx, int64(len(p.futures)))
	w.m.batchTime.Record(ctx, time.Since(p.start).Seconds())
	if len(p.futures) > 0 {
		w.m.logSize.Record(ctx, int64(lastIdx+1))
	}
	return nil
}

// gap handles a delivery of seq while w.cov.Next() < seq: the sequences in
// between were never delivered. It checks with the stream that they no
// longer exist and logs a gap record for the first uncovered run.
func (w *writer) gap(ctx context.Context, seq uint64) (tessera.IndexFuture, error) {
	from := w.cov.Next()
	to := seq - 1
	if c, ok := w.cov.NextCovered(); ok && c-1 < to {
		to = c - 1
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := w.stream.GetMsg(pctx, from, jetstream.WithGetMsgSubject(">"))
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return nil, fmt.Errorf("auditor: check stream sequences %d..%d: %w", from, to, err)
	case m.Sequence <= to:
		return nil, fmt.Errorf("auditor: the consumer delivered sequence %d but skipped %d, which is in the stream", seq, m.Sequence)
	}
	w.log.Warn("stream sequences no longer in the stream; logging a gap record", "first", from, "last", to)
	f := w.app.Add(ctx, tessera.NewEntry(auditlog.EncodeGap(w.cfg.Stream, from, to,
		"not in the stream when the auditor reached it (deleted or expired)")))
	if _, err := w.cov.Add(from, to); err != nil {
		return nil, fmt.Errorf("auditor: internal error: %w", err)
	}
	w.losses.add(seqRange{from, to})
	return f, nil
}

// recover reads the log's tail to learn which stream sequences it already
// accounts for. Entries are written one batch at a time, so any hole a
// failed write can leave lies within the last few batches.
func (w *writer) recover(ctx context.Context) error {
	size, err := w.lr.IntegratedSize(ctx)
	if err != nil {
		return fmt.Errorf("auditor: log size: %w", err)
	}
	if n, err := removeUncommitted(w.cfg.LogDir, size); err != nil {
		return fmt.Errorf("auditor: remove files of an interrupted write: %w", err)
	} else if n > 0 {
		w.log.Info("removed files of a write interrupted before it was committed", "files", n, "size", size)
	}
	// At most maxInflightBatches batches (plus their gap records) can be
	// partly written when a write fails; read well past them.
	window := uint64(4 * maxInflightBatches * w.cfg.BatchSize)
	from := size - min(size, window)
	var recs []auditlog.Record
	for idx := from; idx < size; {
		b, err := client.GetEntryBundle(ctx, w.lr.ReadEntryBundle, idx/256, size)
		if err != nil {
			return fmt.Errorf("auditor: read log tail: %w", err)
		}
		for i := idx % 256; i < uint64(len(b.Entries)) && idx < size; i++ {
			r, err := auditlog.ParseRecord(b.Entries[i])
			if err != nil {
				return fmt.Errorf("auditor: log entry %d: %w", idx, err)
			}
			if r.Stream != w.cfg.Stream {
				return fmt.Errorf("auditor: log entry %d records stream %q, this auditor logs %q", idx, r.Stream, w.cfg.Stream)
			}
			recs = append(recs, r)
			idx++
		}
	}
	base := uint64(1)
	if from > 0 {
		base = ^uint64(0)
		for i := range recs {
			base = min(base, recs[i].FirstCovered())
		}
	}
	w.cov = auditlog.NewCoverage(base)
	seen := base - 1
	for i := range recs {
		if _, err := w.cov.Add(recs[i].FirstCovered(), recs[i].Seq); err != nil {
			w.log.Error("the audit log records a stream sequence twice", "entry", from+uint64(i), "error", err)
		}
		seen = max(seen, recs[i].Seq)
	}
	w.seen.Store(seen)
	if c, ok := w.cov.NextCovered(); ok {
		w.log.Warn("the log's tail misses stream sequences after a failed write; repairing", "first", w.cov.Next(), "last", c-1)
	}
	w.log.Info("recovered log tail", "size", size, "next_seq", w.cov.Next())
	w.m.logSize.Record(ctx, int64(size))
	return nil
}

// recreateConsumer replaces the durable consumer with one that starts at
// the first sequence the log does not account for. Only the lock holder
// does this, so the log, not the consumer's state, decides where to resume.
func (w *writer) recreateConsumer(ctx context.Context) (jetstream.Consumer, error) {
	info, err := w.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("auditor: stream %s: %w", w.cfg.Stream, err)
	}
	if logged := w.cov.Next() - 1; info.State.LastSeq < logged {
		// Resuming would wait for sequences the stream already handed
		// out once and silently skip every new message until then.
		return nil, fmt.Errorf("%w: the log accounts for %s sequences up to %d but the stream's last sequence is %d: the stream was recreated or this log belongs to another one",
			ErrStreamMismatch, w.cfg.Stream, logged, info.State.LastSeq)
	}
	if err := w.js.DeleteConsumer(ctx, w.cfg.Stream, w.cfg.Consumer); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("auditor: delete consumer %s: %w", w.cfg.Consumer, err)
	}
	cons, err := w.js.CreateConsumer(ctx, w.cfg.Stream, jetstream.ConsumerConfig{
		Durable:       w.cfg.Consumer,
		Description:   "Vigil auditor: every event into the transparency log (" + w.cfg.LogDir + ")",
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   w.cov.Next(),
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       w.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 4 * w.cfg.BatchSize,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("auditor: create consumer %s: %w", w.cfg.Consumer, err)
	}
	return cons, nil
}

// publishLoop publishes each new checkpoint on vigil.audit.checkpoint.
func (w *writer) publishLoop(ctx context.Context) {
	t := time.NewTicker(max(w.cfg.CheckpointInterval/4, 25*time.Millisecond))
	defer t.Stop()
	var last []byte
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		last = w.publishCheckpoint(ctx, last)
	}
}

// publishCheckpoint publishes the log's current checkpoint unless it equals
// last, and returns what is now published.
func (w *writer) publishCheckpoint(ctx context.Context, last []byte) []byte {
	cp, err := w.lr.ReadCheckpoint(ctx)
	if err != nil || len(cp) == 0 || bytes.Equal(cp, last) {
		return last
	}
	sum := sha256.Sum256(cp)
	msg := &nats.Msg{Subject: events.SubjectCheckpoint, Data: cp, Header: nats.Header{}}
	if lines := strings.SplitN(string(cp), "\n", 3); len(lines) == 3 {
		msg.Header.Set("Vigil-Log-Origin", lines[0])
		if _, err := strconv.ParseUint(lines[1], 10, 64); err == nil {
			msg.Header.Set("Vigil-Log-Size", lines[1])
		}
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := w.js.PublishMsg(pctx, msg, jetstream.WithMsgID("checkpoint-"+hex.EncodeToString(sum[:20]))); err != nil {
		w.log.Warn("publish checkpoint", "error", err)
		return last
	}
	w.m.checkpoints.Add(ctx, 1)
	return cp
}
