package notifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// worker delivers one subscription's alerts: its durable consumer on
// VIGIL_ALERTS, filters, silences, the per-key state, rate limit and
// digests, retries and dead letters.
type worker struct {
	m      *manager
	sub    Subscription
	sink   sink.Sink
	digest *digester // nil without a rate limit

	mu     sync.Mutex
	health Health
	dirty  bool
	// firing holds the firing notifications by key, re-sent to an
	// Alertmanager while they fire.
	firing map[string]sink.Notification
	// keys caches the subscription's per-key state (the worker is its
	// only writer), loaded at start: no read per alert.
	keys map[string]keyState

	// gone is set once the sink answered 410 Gone: no request more.
	gone atomic.Bool

	cancel context.CancelFunc
	done   chan struct{}
}

func newWorker(m *manager, sub Subscription, s sink.Sink, h Health) *worker {
	w := &worker{m: m, sub: sub, sink: s, health: h, firing: map[string]sink.Notification{}, keys: map[string]keyState{}}
	if r := sub.rateLimit(); r > 0 {
		w.digest = newDigester(w, time.Duration(float64(time.Second)/r))
	}
	return w
}

func (w *worker) start(ctx context.Context) {
	ctx, w.cancel = context.WithCancel(ctx)
	w.done = make(chan struct{})
	go func() {
		defer close(w.done)
		w.run(ctx)
	}()
}

func (w *worker) stop() {
	w.cancel()
	<-w.done
	w.flushHealth(context.Background())
}

// run consumes until ctx ends, starting again after a failure of the
// consumer (NATS away, say).
func (w *worker) run(ctx context.Context) {
	start := w.sub.Created
	cfg := jetstream.ConsumerConfig{
		Durable:       w.sub.Durable(),
		Description:   "vigil-notifier: alerts of subscription " + w.sub.ID,
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverByStartTimePolicy,
		OptStartTime:  &start,
		AckWait:       w.m.cfg.AckWait,
		// The worker retries itself (backoff, Retry-After) and sends to
		// the dead-letter stream: the server never gives up on a message.
		MaxDeliver:    -1,
		MaxAckPending: max(1000, 4*w.m.cfg.Concurrency),
	}
	concurrency := w.m.cfg.Concurrency
	if w.digest != nil {
		// Alerts wait for their digest in handlers: room for a burst.
		concurrency = max(concurrency, 128)
	}
	for ctx.Err() == nil {
		keys, err := w.m.store.keyStates(ctx, w.sub.ID)
		if err != nil {
			w.m.log.ErrorContext(ctx, "read the subscription's alert key states", "subscription", w.sub.ID, "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Second):
			}
			continue
		}
		w.mu.Lock()
		w.keys = keys
		w.mu.Unlock()
		err = w.m.conn.Consume(ctx, events.StreamAlerts, cfg, w.handle,
			bus.WithConcurrency(concurrency), bus.WithOrderingKey(alertOrderingKey),
			bus.WithAlertSource("vigil-notifier"), bus.WithRetryCreate(), bus.WithAckNoWait())
		if err == nil || ctx.Err() != nil {
			return
		}
		w.m.log.ErrorContext(ctx, "subscription consumer failed; starting again", "subscription", w.sub.ID, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// alertOrderingKey keeps the alerts of one key in order (a firing before
// its resolve); keyless alerts spread over the handlers.
func alertOrderingKey(m *bus.Message) string {
	var a events.Alert
	if err := m.Envelope.Decode(events.TypeAlert, &a); err != nil {
		return m.Envelope.ID
	}
	m.Value = a
	if a.Key != "" {
		return a.Key
	}
	return m.Envelope.ID
}

// unhealthyKey is the key of the alert that says subscription id is
// unhealthy.
func unhealthyKey(id string) string { return events.AlertKey("notifier", "subscription."+id) }

// handle delivers one alert (or decides not to). nil acks it.
func (w *worker) handle(ctx context.Context, m *bus.Message) error {
	a, ok := m.Value.(events.Alert)
	if !ok {
		if err := m.Envelope.Decode(events.TypeAlert, &a); err != nil {
			return bus.Permanent(err)
		}
	}
	if a.Key == unhealthyKey(w.sub.ID) {
		// A subscription is not told that it is unhealthy.
		return nil
	}
	vm := w.m.vms.get(ctx, a.VMKey)
	attrs := Attributes(a, vm)
	if w.m.silenced(attrs, time.Now()) {
		w.count(func(h *Health) { h.Silenced++ })
		return nil
	}
	match := matchAll(w.sub.Filters, attrs)
	if a.Key == "" {
		if !match {
			return nil
		}
		return w.deliver(ctx, w.notification(m.Envelope.ID, a, vm), m.Meta.Timestamp)
	}
	seq := m.Meta.Sequence.Stream
	for attempt := 1; ; attempt++ {
		w.mu.Lock()
		ks := w.keys[a.Key]
		w.mu.Unlock()
		if ks.Seq == seq && !ks.At.IsZero() {
			// A redelivery of the alert whose state was recorded: sent
			// again (same id) if it was to be sent; its sending may not
			// have ended.
			if !ks.Notify {
				return nil
			}
			return w.deliver(ctx, w.notification(m.Envelope.ID, a, vm), m.Meta.Timestamp)
		}
		if stale(ks, a, seq) {
			w.m.log.InfoContext(ctx, "late alert dropped: its key's newer state was recorded", "subscription", w.sub.ID,
				"key", a.Key, "state", a.State, "at", a.At, "recorded", ks.State, "recorded_at", ks.At)
			return nil
		}
		next := decide(ks, a, seq, match)
		rev, err := w.m.store.putKeyState(ctx, w.sub.ID, next)
		if bus.IsRevisionConflict(err) && attempt < maxKeyStateAttempts {
			// Another copy of the notifier recorded the key meanwhile:
			// decide again from what it recorded.
			fresh, err := w.m.store.keyState(ctx, w.sub.ID, a.Key)
			if err != nil {
				return err
			}
			w.mu.Lock()
			w.keys[a.Key] = fresh
			w.mu.Unlock()
			continue
		}
		if err != nil {
			return err
		}
		next.rev = rev
		w.mu.Lock()
		w.keys[a.Key] = next
		w.mu.Unlock()
		if !next.Notify {
			return nil
		}
		return w.deliver(ctx, w.notification(m.Envelope.ID, a, vm), m.Meta.Timestamp)
	}
}

// maxKeyStateAttempts bounds the decisions one alert makes against
// concurrent writers of its key's state before it is given back.
const maxKeyStateAttempts = 8

// decide is the state alert a (stream sequence seq; match: the
// subscription's filters select it) leaves its key in after ks, and
// whether it is sent: a firing when the filters select it, unless the
// subscription was already sent the same condition firing (same code,
// not resolved since: a copy of ingest or attest-worker raising it again,
// or two racing); a resolve when the key's firing was sent, whatever the
// filters say of it.
func decide(ks keyState, a events.Alert, seq uint64, match bool) keyState {
	next := keyState{Key: a.Key, State: stateOf(a), At: a.At, Seq: seq, Code: a.Code, rev: ks.rev}
	if a.Resolved() {
		next.Notify = ks.FiringDelivered
		return next
	}
	again := ks.State == events.AlertFiring && ks.FiringDelivered && ks.Code == a.Code
	next.Notify = match && !again
	next.FiringDelivered = next.Notify || again
	return next
}

// stale reports whether alert a (stream sequence seq) is older than the
// key's state already recorded: a late firing after its resolve (by the
// alerts' times, then the stream's order).
func stale(ks keyState, a events.Alert, seq uint64) bool {
	if ks.At.IsZero() {
		return false
	}
	return a.At.Before(ks.At) || a.At.Equal(ks.At) && seq < ks.Seq
}

func stateOf(a events.Alert) events.AlertState {
	if a.Resolved() {
		return events.AlertResolved
	}
	return events.AlertFiring
}

func (w *worker) notification(id string, a events.Alert, vm *sink.VMInfo) sink.Notification {
	st := sink.Firing
	if a.Resolved() {
		st = sink.Resolved
	}
	key := a.Key
	if key == "" {
		key = events.AlertKey(a.VMKey, a.Code)
	}
	return sink.Notification{ID: id, Key: key, State: st, Alert: a, VM: vm, Time: time.Now().UTC(),
		Source: w.m.cfg.Source, ConsoleURL: w.m.cfg.ConsoleURL}
}

// deliver sends n, through the digester when the subscription is rate
// limited. It returns nil once n is delivered or dead-lettered, an error
// only when the worker stops (the alert is then redelivered).
func (w *worker) deliver(ctx context.Context, n sink.Notification, published time.Time) error {
	if w.digest != nil {
		return w.digest.submit(ctx, n, published)
	}
	return w.send(ctx, n, published)
}

// errDisabled is the sink's 410 Gone: the subscription stops.
var errDisabled = errors.New("notifier: the sink answered 410 Gone; subscription disabled")

// send delivers n with retries: any 2xx is success; a rejection (4xx but
// 408, 410, 429) goes to the dead-letter stream at once; 410 disables the
// subscription; other failures are retried with exponential backoff and
// jitter, or after the sink's Retry-After, until published is DLQAfter
// old, then dead-lettered.
func (w *worker) send(ctx context.Context, n sink.Notification, published time.Time) error {
	for attempt := 1; ; attempt++ {
		if w.gone.Load() {
			// Another handler's delivery was answered 410: no request
			// more; the alert is given back for a resume.
			return errDisabled
		}
		err := w.sink.Deliver(ctx, n)
		if err == nil {
			w.delivered(ctx, n)
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		kind := sink.Classify(err)
		w.failed(ctx, err)
		switch {
		case kind == sink.Gone:
			w.disable(ctx, err)
			return errDisabled
		case kind == sink.Reject:
			return w.deadLetter(ctx, n, err, attempt)
		case time.Since(published) >= w.m.cfg.DLQAfter:
			return w.deadLetter(ctx, n, err, attempt)
		}
		wait := w.backoff(attempt)
		if ra := sink.RetryAfterOf(err); ra > 0 {
			wait = min(ra, w.m.cfg.MaxRetryAfter)
		}
		if left := w.m.cfg.DLQAfter - time.Since(published); wait > left {
			wait = max(left, 0)
		}
		w.m.log.WarnContext(ctx, "delivery failed; retrying", "subscription", w.sub.ID, "id", n.ID, "attempt", attempt, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// backoff is the wait before attempt+1: exponential from MinBackoff,
// capped at MaxBackoff, with jitter (half fixed, half random).
func (w *worker) backoff(attempt int) time.Duration {
	d := w.m.cfg.MinBackoff
	for i := 1; i < attempt && d < w.m.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, w.m.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// DeadLetter is what VIGIL_ALERTS_DLQ holds (TypeDeadLetter) and what a
// replay carries (TypeReplay).
type DeadLetter struct {
	Subscription string            `json:"subscription"`
	Notification sink.Notification `json:"notification"`
	Error        string            `json:"error,omitempty"`
	Status       int               `json:"status,omitempty"`
	Attempts     int               `json:"attempts,omitempty"`
	At           time.Time         `json:"at"`
}

// Event types of VIGIL_ALERTS_DLQ.
const (
	TypeDeadLetter = "io.vigil.alert.deadletter.v1"
	TypeReplay     = "io.vigil.alert.replay.v1"
)

func (w *worker) deadLetter(ctx context.Context, n sink.Notification, cause error, attempts int) error {
	dl := DeadLetter{Subscription: w.sub.ID, Notification: n, Error: cause.Error(), Attempts: attempts, At: time.Now().UTC()}
	var se *sink.Error
	if errors.As(cause, &se) {
		dl.Status = se.Status
	}
	env, err := events.New(TypeDeadLetter, w.m.cfg.Source, events.AlertDLQSubject(w.sub.ID), dl)
	if err != nil {
		return err
	}
	env.ID = "dlq-" + w.sub.ID + "-" + n.ID
	if _, err := w.m.conn.Publish(ctx, events.AlertDLQSubject(w.sub.ID), env); err != nil {
		return fmt.Errorf("dead-letter %s: %w", n.ID, err)
	}
	w.m.log.WarnContext(ctx, "alert dead-lettered", "subscription", w.sub.ID, "id", n.ID, "attempts", attempts, "err", cause)
	w.count(func(h *Health) { h.DeadLettered++ })
	return nil
}

func (w *worker) count(f func(*Health)) {
	w.mu.Lock()
	f(&w.health)
	w.dirty = true
	w.mu.Unlock()
}

func (w *worker) delivered(ctx context.Context, n sink.Notification) {
	now := time.Now().UTC()
	var recovered bool
	w.mu.Lock()
	recovered = w.health.Unhealthy
	w.health.LastDelivery = now
	w.health.Delivered++
	if len(n.Digest) > 0 {
		w.health.Digests++
	}
	w.health.ConsecutiveFailures, w.health.FailingSince, w.health.Unhealthy = 0, time.Time{}, false
	w.dirty = true
	if w.sub.Protocol == sink.ProtocolAlertmanager && n.Key != "" && len(n.Digest) == 0 {
		if n.State == sink.Firing {
			w.firing[n.Key] = n
		} else {
			delete(w.firing, n.Key)
		}
	}
	w.mu.Unlock()
	if recovered {
		w.flushHealth(ctx)
		w.m.raiseUnhealthy(ctx, w.sub, events.AlertResolved, "")
	}
}

func (w *worker) failed(ctx context.Context, err error) {
	now := time.Now().UTC()
	w.mu.Lock()
	first := w.health.ConsecutiveFailures == 0
	w.health.ConsecutiveFailures++
	w.health.LastError, w.health.LastErrorAt = err.Error(), now
	if w.health.FailingSince.IsZero() {
		w.health.FailingSince = now
	}
	w.dirty = true
	w.mu.Unlock()
	if first {
		w.flushHealth(ctx)
	}
}

func (w *worker) disable(ctx context.Context, cause error) {
	// Stop first: the handlers running beside this one send nothing more
	// once the subscription is recorded as disabled.
	w.gone.Store(true)
	w.cancel()
	now := time.Now().UTC()
	w.mu.Lock()
	w.health.Disabled, w.health.DisabledAt, w.health.DisabledReason = true, now, cause.Error()
	w.dirty = true
	w.mu.Unlock()
	w.flushHealth(ctx)
	w.m.log.ErrorContext(ctx, "subscription disabled: its sink answered 410 Gone", "subscription", w.sub.ID)
}

// flushHealth writes the health when it changed.
func (w *worker) flushHealth(ctx context.Context) {
	w.mu.Lock()
	if !w.dirty {
		w.mu.Unlock()
		return
	}
	h := w.health
	h.UpdatedAt = time.Now().UTC()
	w.dirty = false
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := w.m.store.putHealth(ctx, w.sub.ID, h); err != nil {
		w.m.log.WarnContext(ctx, "record health", "subscription", w.sub.ID, "err", err)
		w.mu.Lock()
		w.dirty = true
		w.mu.Unlock()
	}
}

// digestID is the stable id of a digest of the notifications ns.
func digestID(ns []sink.Notification) string {
	h := sha256.New()
	for _, n := range ns {
		h.Write([]byte(n.ID))
		h.Write([]byte{0})
	}
	return "digest-" + hex.EncodeToString(h.Sum(nil)[:16])
}
