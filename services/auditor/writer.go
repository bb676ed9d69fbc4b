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

type writer struct {
	cfg    Config
	hooks  hooks
	log    *slog.Logger
	conn   *bus.Conn
	js     jetstream.JetStream
	stream jetstream.Stream
	app    *tessera.Appender
	lr     tessera.LogReader
	cov    *auditlog.Coverage
	tracer trace.Tracer
	m      *metrics
	block  []byte // where entries are encoded; see encode
	// traceFields are the header names the trace propagator reads.
	traceFields []string
	// seen is the highest stream sequence logged or delivered; after
	// start only the batcher's Add writes it.
	seen atomic.Uint64
	// losses are sequences the stream lost before they were logged, for
	// the stream checks to alert on.
	losses *lossQueue
}

type metrics struct {
	entries     metric.Int64Counter
	duplicates  metric.Int64Counter
	recovered   metric.Int64Counter
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
	ms.recovered, _ = m.Int64Counter("vigil.auditor.recovered", metric.WithDescription("Messages read from the stream because the consumer delivered a later one first (a delivery lost in a failover)"), metric.WithUnit("{message}"))
	ms.batchSize, _ = m.Int64Histogram("vigil.auditor.batch.size", metric.WithDescription("Entries per durable batch"), metric.WithUnit("{entry}"))
	ms.batchTime, _ = m.Float64Histogram("vigil.auditor.batch.duration", metric.WithDescription("Time to make a batch durable"), metric.WithUnit("s"))
	ms.logSize, _ = m.Int64Gauge("vigil.auditor.log.size", metric.WithDescription("Entries in the audit log"), metric.WithUnit("{entry}"))
	ms.checkpoints, _ = m.Int64Counter("vigil.auditor.checkpoints.published", metric.WithDescription("Checkpoints published on vigil.audit.checkpoint"), metric.WithUnit("{checkpoint}"))
	ms.alerts, _ = m.Int64Counter("vigil.auditor.alerts", metric.WithDescription("Critical alerts raised about lost checkpoints or events"), metric.WithUnit("{alert}"))
	return &ms
}

// runWriter writes the log while this process holds the writer lock: it
// opens the log, resumes after what it holds, and logs the stream's
// messages in batches until ctx ends or a write fails.
func runWriter(ctx context.Context, cfg Config, h hooks, svc *service.Service, log *slog.Logger, signer note.Signer) (err error) {
	// Tessera's background work must outlive ctx until it is shut down,
	// so that everything handed to it is integrated and checkpointed.
	appCtx, cancelApp := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApp()
	w, shutdown, err := openWriter(appCtx, cfg, svc, log, signer)
	if err != nil {
		return err
	}
	w.hooks = h
	defer func() {
		if serr := w.close(ctx, shutdown); err == nil {
			err = serr
		}
	}()
	if err := w.resume(ctx); err != nil {
		return ignoreCancel(ctx, err)
	}
	defer w.startLoops(ctx)()

	// The consumer is recreated at every start, so that the log, not the
	// consumer's state, decides where to resume.
	b := &batcher{writer: w}
	defer b.drop()
	return svc.Conn.ConsumeBatch(ctx, cfg.Stream, w.consumerConfig(), b, bus.WithRecreate(),
		bus.WithBatch(cfg.BatchSize, maxBatchWait), bus.WithBufferedBytes(maxBufferedBytes), bus.WithInflightBatches(maxInflightBatches))
}

// openWriter opens the log with a Tessera appender that runs until appCtx
// ends or the returned shutdown.
func openWriter(appCtx context.Context, cfg Config, svc *service.Service, log *slog.Logger, signer note.Signer) (*writer, func(context.Context) error, error) {
	driver, err := posix.New(appCtx, posix.Config{Path: cfg.LogDir})
	if err != nil {
		return nil, nil, fmt.Errorf("auditor: tessera storage: %w", err)
	}
	opts := tessera.NewAppendOptions().
		WithCheckpointSigner(signer).
		WithCheckpointInterval(cfg.CheckpointInterval).
		WithBatching(uint(cfg.BatchSize), tesseraMaxAge)
	app, shutdown, lr, err := tessera.NewAppender(appCtx, driver, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("auditor: tessera appender: %w", err)
	}
	w := &writer{cfg: cfg, log: log, conn: svc.Conn, js: svc.Conn.JS, app: app, lr: lr, tracer: svc.TracerProvider.Tracer(instrumentation),
		m: newMetrics(svc.MeterProvider), traceFields: otel.GetTextMapPropagator().Fields(), losses: newLossQueue()}
	if len(w.traceFields) == 0 {
		// bus.ExtractTrace then uses W3C trace context and baggage.
		w.traceFields = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}).Fields()
	}
	return w, shutdown, nil
}

// close shuts Tessera down, so that everything handed to it is integrated
// and checkpointed, and publishes the last checkpoint.
func (w *writer) close(ctx context.Context, shutdown func(context.Context) error) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	var err error
	if serr := shutdown(sctx); serr != nil {
		w.log.Error("tessera shutdown", "err", serr)
		err = fmt.Errorf("auditor: tessera shutdown: %w", serr)
	}
	w.publishCheckpoint(sctx, nil)
	return err
}

// resume learns from the log's tail where to resume and checks that the
// stream still fits the log.
func (w *writer) resume(ctx context.Context) error {
	var err error
	if w.stream, err = w.js.Stream(ctx, w.cfg.Stream); err != nil {
		return fmt.Errorf("auditor: stream %s: %w", w.cfg.Stream, err)
	}
	if err := w.recover(ctx); err != nil {
		return err
	}
	return w.checkStream(ctx)
}

// startLoops starts publishing checkpoints and checking the streams; the
// function it returns stops them.
func (w *writer) startLoops(ctx context.Context) (stop func()) {
	var loops sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	loops.Go(func() { w.publishLoop(ctx) })
	loops.Go(func() { w.checkLoop(ctx) })
	return func() {
		cancel()
		loops.Wait()
	}
}

func ignoreCancel(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
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

// gap handles a delivery of seq while w.cov.Next() < seq: the sequences in
// between were not delivered before it. Each call accounts for the first
// of them. If the stream still holds it, its delivery was lost (a pull
// response lost while the consumer's leader moved: the consumer went on,
// and acknowledging seq would acknowledge it too), so it is read from the
// stream and logged as the consumer would have delivered it; a later
// redelivery is then a duplicate. Sequences the stream no longer has get
// a gap record.
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
	case m.Sequence == from:
		w.log.Warn("the consumer delivered a later message before this one; logging it from the stream", "seq", from, "delivered", seq)
		f := w.app.Add(ctx, tessera.NewEntry(w.encode(auditlog.Message{
			Stream: w.cfg.Stream, Seq: m.Sequence, Subject: m.Subject, Stored: m.Time, Body: m.Data,
		})))
		if _, err := w.cov.Add(from, from); err != nil {
			return nil, fmt.Errorf("auditor: internal error: %w", err)
		}
		w.m.recovered.Add(ctx, 1)
		return f, nil
	case m.Sequence <= to:
		to = m.Sequence - 1
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
			w.log.Error("the audit log records a stream sequence twice", "entry", from+uint64(i), "err", err)
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

// checkStream refuses a stream whose last sequence is below what the log
// accounts for: resuming would wait for sequences the stream already
// handed out once and silently skip every new message until then.
func (w *writer) checkStream(ctx context.Context) error {
	info, err := w.stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("auditor: stream %s: %w", w.cfg.Stream, err)
	}
	if logged := w.cov.Next() - 1; info.State.LastSeq < logged {
		return fmt.Errorf("%w: the log accounts for %s sequences up to %d but the stream's last sequence is %d: the stream was recreated or this log belongs to another one",
			ErrStreamMismatch, w.cfg.Stream, logged, info.State.LastSeq)
	}
	return nil
}

// consumerConfig is the durable consumer, starting at the first sequence
// the log does not account for. Only the lock holder uses it.
func (w *writer) consumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       w.cfg.Consumer,
		Description:   "Vigil auditor: every event into the transparency log (" + w.cfg.LogDir + ")",
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   w.cov.Next(),
		AckPolicy:     jetstream.AckAllPolicy,
		AckWait:       w.cfg.AckWait,
		MaxDeliver:    -1,
		MaxAckPending: 4 * w.cfg.BatchSize,
		ReplayPolicy:  jetstream.ReplayInstantPolicy,
	}
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
		w.log.Warn("publish checkpoint", "err", err)
		return last
	}
	w.m.checkpoints.Add(ctx, 1)
	return cp
}
