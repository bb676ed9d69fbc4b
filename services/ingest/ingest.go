// Package ingest turns Azure VM lifecycle events (Event Grid push, Event Grid
// namespace pull, ARM reconcile) into Vigil lifecycle events, configuration
// findings and attestation jobs (DESIGN.md §2, §5, §7).
//
// Inbound events are stored untouched on VIGIL_RAW before they are
// acknowledged to Azure (a webhook answers 200 only when every event of the
// delivery is stored; a namespace batch is acknowledged only then). A
// durable consumer of VIGIL_RAW normalises them into lifecycle events on
// vigil.events.vm.<vm>.lifecycle, enqueues attestation jobs, and keeps the
// inventory in the vigil-vms bucket by compare and set, so that an event
// older than what is known never rolls a VM back. Enrichment reads each VM
// from ARM within its throttling budgets and publishes configuration
// findings; reconciliation lists every VM of the configured subscriptions
// and heals what events missed.
package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
)

// Defaults of Config.
const (
	DefaultHTTPAddr          = "127.0.0.1:8080"
	DefaultWebhookPath       = "/eventgrid"
	DefaultReconcileInterval = 15 * time.Minute
	DefaultReconcileGrace    = 2 * time.Minute
	DefaultConcurrency       = 32
	// MaxEventClockSkew is the largest Limits.MaxClockSkew accepted: the
	// bound on event times must stay small, or a future-dated event still
	// holds a VM's record until its date.
	MaxEventClockSkew = time.Hour
	// ConsumerName is the durable VIGIL_RAW consumer shared by replicas.
	ConsumerName = "vigil-ingest-normalize"
)

// Config configures ingest. Only a NATS connection or URL is required; the
// webhook is always served, enrichment and reconcile run when ARM is
// configured, the namespace pull when Namespace is set.
type Config struct {
	// Conn is an existing connection (vigil dev); Run does not close it.
	// Without it Run connects with NATS (its URL overridden by NATSURL).
	Conn    *bus.Conn
	NATSURL string
	NATS    bus.Config
	// Topology of the streams and buckets provisioned at start.
	Topology events.Topology

	// HTTPAddr serves the webhook and nothing else (default
	// DefaultHTTPAddr; port 0 picks a free port).
	HTTPAddr string
	// OpsAddr, when set, serves /healthz, /readyz and /metrics (from
	// Telemetry), apart from the webhook: they need not face Azure.
	OpsAddr string
	// WebhookPath is where Event Grid delivers (default "/eventgrid").
	WebhookPath string
	// WebhookSecrets are the accepted shared secrets (at most two, for
	// rotation), sent by Event Grid as ?secret=... in the endpoint URL.
	WebhookSecrets []string
	// RequireWebhookAuth refuses to start without a secret or Entra
	// validation (the vigil-ingest binary sets it; vigil dev does not).
	RequireWebhookAuth bool
	// Entra optionally validates Entra ID bearer tokens on deliveries.
	Entra eventgrid.EntraConfig
	// Limits bound each delivery (1 MiB per event, at most what the NATS
	// server's max_payload can store) and how far ahead of this clock an
	// event's time may be (MaxClockSkew: default 5 min, at most
	// MaxEventClockSkew). That bound applies to every time ingest stores
	// or compares: of webhook and namespace events, inside their data,
	// ARM's creation times and those of inventory records.
	Limits eventgrid.Limits
	// MaxBodyBytes bounds a webhook request body (default 4 MiB).
	MaxBodyBytes int64
	// StoreTimeout bounds how long a delivery waits for JetStream before it
	// is answered 503 (default 25 s, within Event Grid's 30 s timeout).
	StoreTimeout time.Duration
	// OnListen, when set, is called with the webhook's bound address, and
	// OnOpsListen with the ops listener's.
	OnListen, OnOpsListen func(addr string)

	// ARM reaches Azure Resource Manager for enrichment and reconcile.
	// With a nil ARM.Credential (and no Fetcher/Lister) both are off.
	ARM arm.Config
	// Fetcher and Lister replace the ARM client (tests, simulations).
	Fetcher arm.Fetcher
	Lister  Lister
	// Enrichment tunes coalescing and throttling of ARM reads.
	Enrichment arm.EnricherConfig
	// Subscriptions are reconciled every ReconcileInterval (default 15
	// min; negative disables); changes younger than ReconcileGrace
	// (default 2 min) are left to their events.
	Subscriptions     []string
	ReconcileInterval time.Duration
	ReconcileGrace    time.Duration
	// Compliance is the configuration policy (default
	// compliance.DefaultPolicy()).
	Compliance *compliance.Policy

	// Namespace, when set, pulls from an Event Grid namespace (its Store
	// is set by Run).
	Namespace *namespace.Config

	// Concurrency of the VIGIL_RAW consumer (default 32).
	Concurrency int
	// IntakeOnly runs only the intake (webhook and namespace pull, which
	// store raw events): normalisation, enrichment and reconcile then run
	// in other replicas. For intake tiers scaled apart, and for measuring
	// intake alone.
	IntakeOnly bool
	// Telemetry provides tracers, meters and /metrics on OpsAddr
	// (default: otel globals, no /metrics). Health collects readiness
	// checks (default: a new one), served on OpsAddr.
	Telemetry *telemetry.Telemetry
	Health    *telemetry.Health
	// Logger defaults to slog.Default().
	Logger *slog.Logger

	// afterStore is a test hook between storing a delivery and answering.
	afterStore func(*http.Request)
}

// ErrConfig is returned for an unusable configuration.
var ErrConfig = errors.New("ingest: invalid configuration")

// Run runs ingest until ctx ends; it returns nil after a clean shutdown.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	secrets, err := eventgrid.NewSecrets(cfg.WebhookSecrets...)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	var tokens *eventgrid.TokenValidator
	if cfg.Entra.Enabled() {
		if tokens, err = eventgrid.NewTokenValidator(cfg.Entra); err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if cfg.RequireWebhookAuth && !secrets.Enabled() && tokens == nil {
		return fmt.Errorf("%w: the webhook needs a shared secret (or Entra ID validation)", ErrConfig)
	}
	limits := cfg.Limits
	switch {
	case limits.MaxClockSkew == 0:
		limits.MaxClockSkew = eventgrid.DefaultMaxClockSkew
	case limits.MaxClockSkew < 0 || limits.MaxClockSkew > MaxEventClockSkew:
		return fmt.Errorf("%w: the clock skew allowed for event times is %s, want more than 0 and at most %s", ErrConfig, limits.MaxClockSkew, MaxEventClockSkew)
	}
	if cfg.HTTPAddr == "" {
		cfg.HTTPAddr = DefaultHTTPAddr
	}
	if cfg.WebhookPath == "" {
		cfg.WebhookPath = DefaultWebhookPath
	}
	if cfg.ReconcileInterval == 0 {
		cfg.ReconcileInterval = DefaultReconcileInterval
	}
	if cfg.ReconcileGrace <= 0 {
		cfg.ReconcileGrace = DefaultReconcileGrace
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	policy := compliance.DefaultPolicy()
	if cfg.Compliance != nil {
		policy = *cfg.Compliance
	}
	var mp metric.MeterProvider = otel.GetMeterProvider()
	var tp trace.TracerProvider = otel.GetTracerProvider()
	if cfg.Telemetry != nil {
		mp, tp = cfg.Telemetry.MeterProvider, cfg.Telemetry.TracerProvider
	}
	tracer := tp.Tracer("github.com/vigil-cc/vigil/services/ingest")

	conn := cfg.Conn
	if conn == nil {
		nc := cfg.NATS
		if cfg.NATSURL != "" {
			nc.URL = cfg.NATSURL
		}
		if nc.Name == "" {
			nc.Name = ServiceName
		}
		nc.WaitForServer = true
		nc.Logger = log
		nc.TracerProvider, nc.MeterProvider = tp, mp
		if conn, err = bus.Connect(ctx, nc); err != nil {
			return err
		}
		defer func() { _ = conn.Close() }()
	}
	if err := events.Provision(ctx, conn.JS, cfg.Topology); err != nil {
		return fmt.Errorf("ingest: provision: %w", err)
	}
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		return fmt.Errorf("ingest: bucket %s: %w", events.BucketVMs, err)
	}
	raw, err := newRawStore(conn.NC)
	if err != nil {
		return err
	}
	if limits.MaxEventBytes <= 0 {
		limits.MaxEventBytes = eventgrid.DefaultMaxEventBytes
	}
	if fit := raw.maxEventBytes(); limits.MaxEventBytes > fit {
		log.Warn("NATS max_payload limits the event size below Event Grid's 1 MB; raise max_payload to accept every event",
			"max_event_bytes", fit, "max_payload", conn.NC.MaxPayload())
		limits.MaxEventBytes = fit
	}

	m := newMetrics(mp)
	proc := &processor{conn: conn, inv: &inventory{kv: kv, now: time.Now, skew: limits.MaxClockSkew},
		policy: policy, log: log, m: m, now: time.Now, skew: limits.MaxClockSkew}

	fetcher, lister := cfg.Fetcher, cfg.Lister
	if cfg.ARM.Credential != nil && (fetcher == nil || lister == nil) {
		client, err := arm.NewClient(cfg.ARM)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		if fetcher == nil {
			fetcher = client
		}
		if lister == nil {
			lister = client
		}
	}
	var enricher *arm.Enricher
	if fetcher != nil {
		ec := cfg.Enrichment
		ec.Logger = log
		observe := ec.Observe
		ec.Observe = func(outcome string) {
			m.armRead(outcome)
			if observe != nil {
				observe(outcome)
			}
		}
		enricher = arm.NewEnricher(ec, fetcher, proc.applyEnrichment)
		proc.enrich = enricher.Request
	}

	storeFor := func(origin string) eventgrid.StoreFunc {
		return func(ctx context.Context, evs []eventgrid.Event) error {
			ctx, span := tracer.Start(ctx, "ingest.store "+origin, trace.WithAttributes(
				attribute.String("messaging.destination.name", events.RawSubject(origin)),
				attribute.Int("messaging.batch.message_count", len(evs))))
			defer span.End()
			err := raw.store(ctx, origin, evs)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			return err
		}
	}
	hook, err := eventgrid.NewHandler(eventgrid.HandlerConfig{
		Store: storeFor(OriginEventGrid), Secrets: secrets, Tokens: tokens, Limits: limits,
		MaxBodyBytes: cfg.MaxBodyBytes, StoreTimeout: cfg.StoreTimeout, Logger: log, Observe: m.webhook, AfterStore: cfg.afterStore,
	})
	if err != nil {
		return err
	}

	health := cfg.Health
	if health == nil {
		health = telemetry.NewHealth()
	}
	health.AddReadiness("nats", telemetry.NATSConnected(conn.NC))
	health.AddReadiness("jetstream", telemetry.JetStreamReachable(conn.JS))
	// The webhook listener serves the webhook alone (404 for the rest, 405
	// for other methods on its path); health and metrics are on the ops
	// listener, which need not face Azure.
	srv, err := telemetry.ListenBare(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	srv.Handle("POST "+cfg.WebhookPath, hook)
	srv.Handle("OPTIONS "+cfg.WebhookPath, hook)
	var ops *telemetry.Server
	if cfg.OpsAddr != "" {
		if ops, err = telemetry.Listen(cfg.OpsAddr, cfg.Telemetry, health); err != nil {
			_ = srv.Close()
			return err
		}
		log.Info("ingest health and metrics listening", "url", ops.URL())
	}
	log.Info("ingest webhook listening", "url", "http://"+srv.Addr()+cfg.WebhookPath, "secret", secrets.Enabled(), "entra", tokens != nil,
		"enrichment", enricher != nil, "subscriptions", len(cfg.Subscriptions), "namespace", cfg.Namespace != nil)
	if cfg.OnListen != nil {
		cfg.OnListen(srv.Addr())
	}
	if ops != nil && cfg.OnOpsListen != nil {
		cfg.OnOpsListen(ops.Addr())
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var firstErr error
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				errMu.Lock()
				if firstErr == nil {
					firstErr = fmt.Errorf("ingest: %s: %w", name, err)
				}
				errMu.Unlock()
				cancel(err)
			}
		}()
	}
	start("http", srv.Serve)
	if ops != nil {
		start("ops", ops.Serve)
	}
	norm := &normalizer{p: proc, conn: conn, tracer: tracer, workers: cfg.Concurrency,
		backoff: []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second}}
	if !cfg.IntakeOnly {
		start("normalize", norm.run)
	}
	if enricher != nil && !cfg.IntakeOnly {
		start("enrich", enricher.Run)
	}
	if lister != nil && len(cfg.Subscriptions) > 0 && cfg.ReconcileInterval > 0 && !cfg.IntakeOnly {
		rec := &reconciler{p: proc, list: lister, subs: cfg.Subscriptions, grace: cfg.ReconcileGrace, log: log.With("component", "reconcile")}
		start("reconcile", func(ctx context.Context) error { rec.loop(ctx, cfg.ReconcileInterval); return nil })
	}
	if cfg.Namespace != nil {
		nsCfg := *cfg.Namespace
		nsCfg.Store = storeFor(OriginNamespace)
		if nsCfg.Limits.MaxEventBytes <= 0 || nsCfg.Limits.MaxEventBytes > limits.MaxEventBytes {
			nsCfg.Limits.MaxEventBytes = limits.MaxEventBytes
		}
		if nsCfg.Limits.MaxClockSkew <= 0 || nsCfg.Limits.MaxClockSkew > limits.MaxClockSkew {
			nsCfg.Limits.MaxClockSkew = limits.MaxClockSkew
		}
		if nsCfg.Logger == nil {
			nsCfg.Logger = log
		}
		observe := nsCfg.Observe
		nsCfg.Observe = func(op string, n int, err error) {
			outcome := "ok"
			if err != nil {
				outcome = "error"
			}
			m.namespaceOp(op, outcome)
			if op == "acknowledge" && err == nil {
				m.namespaceEvents("stored", n)
			}
			if op == "reject" && err == nil {
				m.namespaceEvents("rejected", n)
			}
			if observe != nil {
				observe(op, n, err)
			}
		}
		puller, err := namespace.New(nsCfg)
		if err != nil {
			cancel(err)
			wg.Wait()
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		start("namespace", puller.Run)
	}
	wg.Wait()
	return firstErr
}
