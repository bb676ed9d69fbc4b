package notifier

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// Name is the service's name (and bus principal).
const Name = "notifier"

// Defaults of Config.
const (
	DefaultDLQAfter           = 24 * time.Hour
	DefaultUnhealthyAfter     = 15 * time.Minute
	DefaultAckWait            = 30 * time.Second
	DefaultConcurrency        = 16
	DefaultMinBackoff         = time.Second
	DefaultMaxBackoff         = 5 * time.Minute
	DefaultMaxRetryAfter      = time.Hour
	DefaultAlertmanagerResend = time.Minute
	DefaultHealthInterval     = time.Second
	DefaultSource             = "/vigil/notifier"
)

// ErrConfig marks a configuration error.
var ErrConfig = errors.New("notifier: config")

// Config configures the notifier.
type Config struct {
	service.Options

	// KeyFile is the notifier's private key (sealed sinks open with it);
	// GenerateKey creates it when missing.
	KeyFile     string
	GenerateKey bool

	// AllowPrivateSinks lets sinks resolve to loopback, private,
	// link-local and IMDS addresses, and use http (dev and tests only).
	AllowPrivateSinks bool
	// Client sends every delivery; default sink.NewClient with
	// AllowPrivateSinks.
	Client *sink.Client

	// DLQAfter is how long an alert may fail with retryable errors (5xx,
	// timeouts, 429) before it goes to VIGIL_ALERTS_DLQ; default 24 h.
	DLQAfter time.Duration
	// UnhealthyAfter is how long a subscription may fail before it is
	// marked unhealthy and an alert says so; default 15 min.
	UnhealthyAfter time.Duration
	// MinBackoff and MaxBackoff bound the exponential backoff between
	// attempts (with jitter); MaxRetryAfter caps a sink's Retry-After.
	MinBackoff, MaxBackoff, MaxRetryAfter time.Duration
	// AckWait is the consumers' AckWait: how long after a crash an alert
	// in delivery is redelivered; default 30 s.
	AckWait time.Duration
	// Concurrency is the deliveries in flight per subscription (those of
	// one alert key stay in order); default 16.
	Concurrency int
	// AlertmanagerResend is how often firing alerts are re-sent to an
	// Alertmanager; default 1 min.
	AlertmanagerResend time.Duration
	// HealthInterval is how often health is written and checked; default 1 s.
	HealthInterval time.Duration
	// Source is the notifications' CloudEvents source; ConsoleURL links a
	// notification to the console.
	Source     string
	ConsoleURL string
}

func (c *Config) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.DLQAfter, DefaultDLQAfter)
	def(&c.UnhealthyAfter, DefaultUnhealthyAfter)
	def(&c.MinBackoff, DefaultMinBackoff)
	def(&c.MaxBackoff, DefaultMaxBackoff)
	def(&c.MaxRetryAfter, DefaultMaxRetryAfter)
	def(&c.AckWait, DefaultAckWait)
	def(&c.AlertmanagerResend, DefaultAlertmanagerResend)
	def(&c.HealthInterval, DefaultHealthInterval)
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if c.Source == "" {
		c.Source = DefaultSource
	}
	if c.Client == nil {
		c.Client = sink.NewClient(sink.ClientOptions{AllowPrivate: c.AllowPrivateSinks, UserAgent: "vigil-notifier"})
	}
}

// Run runs the notifier until ctx ends: one durable consumer on
// VIGIL_ALERTS per subscription, delivering to its sink.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if cfg.KeyFile == "" {
		return fmt.Errorf("%w: no key file", ErrConfig)
	}
	key, err := LoadKeyFile(cfg.KeyFile)
	if errors.Is(err, fs.ErrNotExist) && cfg.GenerateKey {
		if err = GenerateKeyFile(cfg.KeyFile); err == nil {
			key, err = LoadKeyFile(cfg.KeyFile)
		}
	}
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	svc, err := service.Start(ctx, Name, cfg.Options)
	if err != nil {
		return err
	}
	store, err := OpenStore(ctx, svc.Conn.JS)
	if err == nil {
		err = store.putPublicKey(ctx, key.PublicKey())
	}
	if err != nil {
		svc.Stop()
		_ = svc.Wait()
		return err
	}
	m := &manager{cfg: cfg, svc: svc, conn: svc.Conn, log: svc.Log, store: store, key: key,
		workers: map[string]*worker{}, vms: newVMCache(svc.Conn.JS)}
	svc.Go("subscriptions", m.watchSubscriptions)
	svc.Go("silences", m.watchSilences)
	svc.Go("replay", m.replay)
	svc.Go("health", m.healthLoop)
	svc.MarkReady()
	err = svc.Wait()
	m.stopAll()
	return err
}

// manager runs a worker per active subscription.
type manager struct {
	cfg   Config
	svc   *service.Service
	conn  *bus.Conn
	log   *slog.Logger
	store *Store
	key   *PrivateKey
	vms   *vmCache

	mu       sync.Mutex
	workers  map[string]*worker
	silences []events.Silence
}

// watchSubscriptions starts, restarts and stops workers as subscriptions
// are stored, changed and deleted.
func (m *manager) watchSubscriptions(ctx context.Context) error {
	w, err := m.store.subs.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("subscription watch ended")
			}
			if e == nil {
				continue
			}
			m.apply(ctx, e)
		}
	}
}

func (m *manager) apply(ctx context.Context, e jetstream.KeyValueEntry) {
	id := e.Key()
	if e.Operation() != jetstream.KeyValuePut {
		m.stop(id)
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if err := m.conn.JS.DeleteConsumer(dctx, events.StreamAlerts, DurablePrefix+id); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			m.log.WarnContext(ctx, "delete a deleted subscription's consumer", "subscription", id, "err", err)
		}
		m.log.InfoContext(ctx, "subscription deleted", "subscription", id)
		return
	}
	var sub Subscription
	if err := json.Unmarshal(e.Value(), &sub); err != nil || sub.Validate() != nil {
		m.log.ErrorContext(ctx, "unreadable subscription", "subscription", id, "err", err)
		return
	}
	m.stop(id)
	if sub.Paused {
		m.log.InfoContext(ctx, "subscription paused", "subscription", id)
		return
	}
	h, err := m.store.Health(ctx, id)
	if err == nil && h.Disabled && h.DisabledAt.After(sub.ResumedAt) {
		m.log.WarnContext(ctx, "subscription disabled (its sink answered 410 Gone); resume it to deliver again", "subscription", id)
		return
	}
	spec, err := m.key.open(sub)
	var s sink.Sink
	if err == nil {
		s, err = sink.New(spec, m.cfg.Client)
	}
	if err != nil {
		m.log.ErrorContext(ctx, "subscription's sink refused", "subscription", id, "err", err)
		m.recordError(ctx, id, h, err)
		return
	}
	wk := newWorker(m, sub, s, h)
	m.mu.Lock()
	m.workers[id] = wk
	m.mu.Unlock()
	wk.start(ctx)
	m.log.InfoContext(ctx, "subscription active", "subscription", id, "protocol", sub.Protocol, "sink", sub.Sink)
}

// recordError records a subscription's configuration error in its health.
func (m *manager) recordError(ctx context.Context, id string, h Health, err error) {
	now := time.Now().UTC()
	h.LastError, h.LastErrorAt, h.UpdatedAt = err.Error(), now, now
	if perr := m.store.putHealth(ctx, id, h); perr != nil {
		m.log.WarnContext(ctx, "record health", "subscription", id, "err", perr)
	}
}

func (m *manager) worker(id string) *worker {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.workers[id]
}

func (m *manager) stop(id string) {
	m.mu.Lock()
	wk := m.workers[id]
	delete(m.workers, id)
	m.mu.Unlock()
	if wk != nil {
		wk.stop()
	}
}

func (m *manager) stopAll() {
	m.mu.Lock()
	ids := make([]string, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	m.mu.Unlock()
	for _, id := range ids {
		m.stop(id)
	}
}

func (m *manager) allWorkers() []*worker {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*worker, 0, len(m.workers))
	for _, w := range m.workers {
		out = append(out, w)
	}
	return out
}

// watchSilences keeps the silences in memory.
func (m *manager) watchSilences(ctx context.Context) error {
	w, err := m.store.silences.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	byID := map[string]events.Silence{}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("silence watch ended")
			}
			if e == nil {
				continue
			}
			if e.Operation() != jetstream.KeyValuePut {
				delete(byID, e.Key())
			} else {
				var sl events.Silence
				if err := json.Unmarshal(e.Value(), &sl); err == nil {
					byID[e.Key()] = sl
				}
			}
			list := make([]events.Silence, 0, len(byID))
			for _, sl := range byID {
				list = append(list, sl)
			}
			m.mu.Lock()
			m.silences = list
			m.mu.Unlock()
		}
	}
}

// silenced reports whether an active silence matches attrs.
func (m *manager) silenced(attrs map[string]string, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, sl := range m.silences {
		if silenceActive(sl, now) && MatchGlobs(sl.Match, attrs) {
			return true
		}
	}
	return false
}
