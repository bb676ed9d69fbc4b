package arm

import (
	"container/heap"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"

	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// Fetcher reads what enrichment needs about a VM; *Client is one.
type Fetcher interface {
	Facts(ctx context.Context, id normalize.VMID) (compliance.Facts, error)
}

// Result is the outcome of one enrichment.
type Result struct {
	VM        normalize.VMID
	Facts     compliance.Facts
	NotFound  bool      // ARM answered 404 twice, NotFoundConfirm apart
	FetchedAt time.Time // when the read started
}

// ResultFunc applies a result (stores the inventory, publishes findings).
// An error makes the Enricher try the VM again later.
type ResultFunc func(ctx context.Context, r Result) error

// EnricherConfig tunes the Enricher. Zero values take the defaults.
type EnricherConfig struct {
	// PerVMRate and PerVMBurst bound reads of one VM (default 12 a minute
	// after a burst of 36, ARM's compute budget for Gets of one VM).
	PerVMRate  rate.Limit
	PerVMBurst int
	// PerSubscriptionRate and PerSubscriptionBurst bound reads of one
	// subscription (default 20/s after a burst of 1000, below ARM's
	// 3-minute and 30-minute compute read budgets).
	PerSubscriptionRate  rate.Limit
	PerSubscriptionBurst int
	// Debounce coalesces a burst of requests for one VM into one read: the
	// read waits until no request came for Debounce (default 2 s), but no
	// longer than MaxDelay after the first (default 15 s).
	Debounce, MaxDelay time.Duration
	// Fresh: a read that started more than Fresh after an event's time
	// already reflects the event (default 5 s), so the event causes no read.
	Fresh time.Duration
	// NotFoundConfirm is how long a 404 is re-checked before it counts, as
	// ARM reads can lag right after a create (default 30 s).
	NotFoundConfirm time.Duration
	// RetryBase and RetryMax bound the backoff after failed reads (default
	// 2 s doubling to 5 min). An ARM outage only delays enrichment.
	RetryBase, RetryMax time.Duration
	// Workers is the number of concurrent reads (default 8).
	Workers int
	// MaxPending bounds the queue (default 100,000 VMs); beyond it requests
	// are dropped and picked up by the next reconcile.
	MaxPending int
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Tracer makes the span of each read ("ingest.enrich"), a child of
	// the span that first asked for the read (the event's processing), so
	// that the trace of a VM's event goes on through its enrichment and
	// what follows from it. Default: no spans.
	Tracer trace.Tracer
	// Observe, when set, is told the outcome of every read: "ok",
	// "not_found", "throttled", "error", and "coalesced"/"fresh" for
	// requests that needed no read of their own.
	Observe func(outcome string)
}

func (c *EnricherConfig) defaults() {
	if c.PerVMRate <= 0 {
		c.PerVMRate = rate.Every(5 * time.Second)
	}
	if c.PerVMBurst <= 0 {
		c.PerVMBurst = 36
	}
	if c.PerSubscriptionRate <= 0 {
		c.PerSubscriptionRate = 20
	}
	if c.PerSubscriptionBurst <= 0 {
		c.PerSubscriptionBurst = 1000
	}
	if c.Debounce <= 0 {
		c.Debounce = 2 * time.Second
	}
	if c.MaxDelay <= 0 {
		c.MaxDelay = 15 * time.Second
	}
	if c.Fresh <= 0 {
		c.Fresh = 5 * time.Second
	}
	if c.NotFoundConfirm < 0 {
		c.NotFoundConfirm = 0
	} else if c.NotFoundConfirm == 0 {
		c.NotFoundConfirm = 30 * time.Second
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 2 * time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 5 * time.Minute
	}
	if c.Workers <= 0 {
		c.Workers = 8
	}
	if c.MaxPending <= 0 {
		c.MaxPending = 100_000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Tracer == nil {
		c.Tracer = noop.NewTracerProvider().Tracer("")
	}
}

// Enricher coalesces enrichment requests per VM and reads VMs from ARM
// within per-VM and per-subscription token buckets, pausing a subscription
// for as long as a 429 asks. Requests are in memory; what must survive a
// restart is kept by the caller (the inventory marks VMs whose newest event
// is newer than their last enrichment, and reconcile requests them again).
type Enricher struct {
	cfg   EnricherConfig
	fetch Fetcher
	apply ResultFunc
	log   *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry // by VM key
	// subs are the subscriptions' queues, by lower-cased subscription
	// id; ready orders those with entries waiting by when their next
	// read may start.
	subs     map[string]*subQueue
	ready    heapOf[*subQueue]
	vmLim    map[string]*limiterUse
	lastRead map[string]time.Time // VM key -> start of the last successful read
	wake     chan struct{}
}

type entry struct {
	vm        normalize.VMID
	key       string
	first     time.Time // first request of the current coalesced batch
	due       time.Time
	asOf      time.Time // newest event time the read must reflect
	attempt   int
	notFound  int
	inFlight  bool
	again     bool      // requested while in flight, for an event newer than the read
	againAsOf time.Time //
	// cause and againCause are the spans of the first request of the
	// batch and of the first request during the read.
	cause, againCause trace.SpanContext
	sub               *subQueue
	index             int // in sub.queue; -1 when not queued
}

type limiterUse struct {
	lim  *rate.Limiter
	used time.Time
}

// NewEnricher builds an Enricher; call Run to start it.
func NewEnricher(cfg EnricherConfig, fetch Fetcher, apply ResultFunc) *Enricher {
	cfg.defaults()
	return &Enricher{
		cfg:      cfg,
		fetch:    fetch,
		apply:    apply,
		log:      cfg.Logger.With("component", "enricher"),
		entries:  map[string]*entry{},
		subs:     map[string]*subQueue{},
		ready:    heapOf[*subQueue]{less: byReady},
		vmLim:    map[string]*limiterUse{},
		lastRead: map[string]time.Time{},
		wake:     make(chan struct{}, 1),
	}
}

// Request asks for vm to be read so that the inventory reflects an event
// that happened at asOf. Requests for a VM coalesce; a request already
// covered by a read that started after asOf (plus Fresh) needs no read.
// The read's span is a child of the span in ctx of the batch's first
// request. It reports whether the request queued a read of its own (not
// coalesced with one queued or in flight, not fresh, not dropped).
func (e *Enricher) Request(ctx context.Context, vm normalize.VMID, asOf time.Time) bool {
	cause := trace.SpanContextFromContext(ctx)
	key := vm.Key()
	now := time.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if last, ok := e.lastRead[key]; ok && !asOf.IsZero() && last.After(asOf.Add(e.cfg.Fresh)) {
		e.observe("fresh")
		return false
	}
	en, ok := e.entries[key]
	switch {
	case !ok:
		if len(e.entries) >= e.cfg.MaxPending {
			e.log.Warn("enrichment queue full; request dropped until the next reconcile", "vm", vm.ResourceID)
			e.observe("dropped")
			return false
		}
		en = &entry{vm: vm, key: key, first: now, due: now.Add(e.cfg.Debounce), asOf: asOf, cause: cause, sub: e.subQueue(vm.Subscription), index: -1}
		e.entries[key] = en
		en.sub.members++
		e.push(en)
	case en.inFlight:
		e.observe("coalesced")
		en.again = true
		if !en.againCause.IsValid() {
			en.againCause = cause
		}
		if asOf.After(en.againAsOf) {
			en.againAsOf = asOf
		}
		return false
	default:
		e.observe("coalesced")
		if !en.cause.IsValid() {
			en.cause = cause
		}
		if asOf.After(en.asOf) {
			en.asOf = asOf
		}
		if en.attempt == 0 && en.index >= 0 {
			// Trailing debounce, capped at MaxDelay after the first request.
			due := now.Add(e.cfg.Debounce)
			if limit := en.first.Add(e.cfg.MaxDelay); due.After(limit) {
				due = limit
			}
			if due.After(en.due) {
				e.reschedule(en, due)
			}
		}
		return false
	}
	e.signal()
	return true
}

// Pending is the number of VMs waiting for or in enrichment.
func (e *Enricher) Pending() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.entries)
}

func (e *Enricher) signal() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// Run processes requests until ctx ends.
func (e *Enricher) Run(ctx context.Context) error {
	sem := make(chan struct{}, e.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	prune := time.NewTicker(time.Minute)
	defer prune.Stop()
	for {
		en, wait := e.next(time.Now())
		if en != nil {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				e.release(en)
				return nil
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { <-sem }()
				e.read(ctx, en)
			}()
			continue
		}
		timer.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-e.wake:
		case <-timer.C:
		case <-prune.C:
			e.prune(time.Now())
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// next pops the next entry that is due and within budget, or says how long
// to wait. It looks at the head of one subscription's queue at a time: a
// subscription out of budget (or paused by a 429) waits as a whole, so that
// a fleet queued behind ARM's read budget costs nothing until its turn.
func (e *Enricher) next(now time.Time) (*entry, time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.ready.Len() > 0 {
		q := e.ready.head()
		if at := q.readyAt(); at.After(now) {
			return nil, at.Sub(now)
		}
		en := q.queue.head()
		rv := e.vmLimiter(en.key, now).ReserveN(now, 1)
		if d := rv.DelayFrom(now); d > 0 {
			rv.CancelAt(now)
			e.reschedule(en, now.Add(d))
			continue
		}
		rs := q.lim.ReserveN(now, 1)
		if d := rs.DelayFrom(now); d > 0 {
			rs.CancelAt(now)
			rv.CancelAt(now)
			e.block(q, now.Add(d))
			continue
		}
		heap.Pop(&q.queue)
		e.fixReady(q)
		en.inFlight = true
		return en, 0
	}
	return nil, time.Hour
}

// subQueue is the queue of the subscription named sub (lower-cased).
func (e *Enricher) subQueue(sub string) *subQueue {
	sub = strings.ToLower(sub)
	q, ok := e.subs[sub]
	if !ok {
		q = &subQueue{queue: heapOf[*entry]{less: byDue}, lim: rate.NewLimiter(e.cfg.PerSubscriptionRate, e.cfg.PerSubscriptionBurst), index: -1}
		e.subs[sub] = q
	}
	return q
}

// push queues en in its subscription's queue.
func (e *Enricher) push(en *entry) {
	heap.Push(&en.sub.queue, en)
	e.fixReady(en.sub)
}

// reschedule moves queued en to due.
func (e *Enricher) reschedule(en *entry, due time.Time) {
	en.due = due
	heap.Fix(&en.sub.queue, en.index)
	e.fixReady(en.sub)
}

// block holds q's reads until until (a 429's Retry-After, or the
// subscription's next token).
func (e *Enricher) block(q *subQueue, until time.Time) {
	if until.After(q.blocked) {
		q.blocked = until
		e.fixReady(q)
	}
}

// fixReady puts q in, moves it within or takes it out of ready, as its
// queue now is.
func (e *Enricher) fixReady(q *subQueue) {
	switch {
	case q.queue.Len() == 0 && q.index >= 0:
		heap.Remove(&e.ready, q.index)
	case q.queue.Len() == 0:
	case q.index < 0:
		heap.Push(&e.ready, q)
	default:
		heap.Fix(&e.ready, q.index)
	}
}

func (e *Enricher) release(en *entry) {
	e.mu.Lock()
	defer e.mu.Unlock()
	en.inFlight = false
	e.push(en)
}

func (e *Enricher) vmLimiter(key string, now time.Time) *rate.Limiter {
	u, ok := e.vmLim[key]
	if !ok {
		u = &limiterUse{lim: rate.NewLimiter(e.cfg.PerVMRate, e.cfg.PerVMBurst)}
		e.vmLim[key] = u
	}
	u.used = now
	return u.lim
}

// prune forgets per-VM limiters and read times that no longer matter.
func (e *Enricher) prune(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	idle := time.Duration(float64(e.cfg.PerVMBurst)/float64(e.cfg.PerVMRate)*float64(time.Second)) + time.Minute
	for k, u := range e.vmLim {
		if now.Sub(u.used) > idle {
			delete(e.vmLim, k)
		}
	}
	for k, t := range e.lastRead {
		if now.Sub(t) > time.Hour {
			delete(e.lastRead, k)
		}
	}
	for k, q := range e.subs {
		// A subscription's limiter is full again after burst/rate idle.
		if q.members == 0 && q.lim.TokensAt(now) >= float64(e.cfg.PerSubscriptionBurst) && q.blocked.Before(now) {
			delete(e.subs, k)
		}
	}
}

func (e *Enricher) read(ctx context.Context, en *entry) {
	if en.cause.IsValid() {
		ctx = trace.ContextWithSpanContext(ctx, en.cause)
	}
	ctx, span := e.cfg.Tracer.Start(ctx, "ingest.enrich", trace.WithAttributes(
		attribute.String("azure.resource_id", en.vm.ResourceID), attribute.Int("vigil.enrich.attempt", en.attempt+1)))
	defer span.End()
	start := time.Now()
	facts, err := e.fetch.Facts(ctx, en.vm)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	var thr *ThrottledError
	switch {
	case err == nil:
		e.observe("ok")
		en.notFound = 0
		if aerr := e.apply(ctx, Result{VM: en.vm, Facts: facts, FetchedAt: start}); aerr != nil {
			e.log.Warn("applying enrichment failed; retrying", "vm", en.vm.ResourceID, "err", aerr)
			e.retry(en, e.backoff(en))
			return
		}
		e.done(en, start)
	case errors.Is(err, ErrNotFound):
		e.observe("not_found")
		en.notFound++
		if en.notFound < 2 && e.cfg.NotFoundConfirm > 0 {
			e.retry(en, e.cfg.NotFoundConfirm)
			return
		}
		if aerr := e.apply(ctx, Result{VM: en.vm, NotFound: true, FetchedAt: start}); aerr != nil {
			e.log.Warn("applying a deleted VM failed; retrying", "vm", en.vm.ResourceID, "err", aerr)
			e.retry(en, e.backoff(en))
			return
		}
		e.done(en, start)
	case errors.As(err, &thr):
		e.observe("throttled")
		e.log.Warn("ARM throttled enrichment; pausing the subscription", "subscription", en.vm.Subscription, "retry_after", thr.RetryAfter)
		e.mu.Lock()
		e.block(en.sub, time.Now().Add(thr.RetryAfter))
		e.mu.Unlock()
		e.retry(en, thr.RetryAfter)
	default:
		e.observe("error")
		d := e.backoff(en)
		e.log.Warn("ARM read failed; retrying later", "vm", en.vm.ResourceID, "attempt", en.attempt, "retry_in", d, "err", err)
		e.retry(en, d)
	}
}

func (e *Enricher) backoff(en *entry) time.Duration {
	d := e.cfg.RetryBase
	for i := 0; i < en.attempt && d < e.cfg.RetryMax; i++ {
		d *= 2
	}
	return min(d, e.cfg.RetryMax)
}

// retry puts en back in the queue after d.
func (e *Enricher) retry(en *entry, d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	en.attempt++
	en.inFlight = false
	en.again = false
	if en.againAsOf.After(en.asOf) {
		en.asOf = en.againAsOf
	}
	en.due = time.Now().Add(d)
	e.push(en)
	e.signal()
}

// done completes en; a request that came in during the read for a newer
// event starts a new coalesced batch.
func (e *Enricher) done(en *entry, start time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.lastRead[en.key] = start
	delete(e.entries, en.key)
	en.sub.members--
	if en.again && (en.againAsOf.IsZero() || en.againAsOf.Add(e.cfg.Fresh).After(start)) {
		now := time.Now()
		next := &entry{vm: en.vm, key: en.key, first: now, due: now.Add(e.cfg.Debounce), asOf: en.againAsOf, cause: en.againCause, sub: en.sub, index: -1}
		e.entries[en.key] = next
		next.sub.members++
		e.push(next)
		e.signal()
	}
}

func (e *Enricher) observe(outcome string) {
	if e.cfg.Observe != nil {
		e.cfg.Observe(outcome)
	}
}
