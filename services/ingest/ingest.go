package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// Defaults of Config.
const (
	DefaultWebhookAddr       = "127.0.0.1:8080"
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
	// Options are the bus connection, provisioning, operational listener,
	// health, telemetry, logger and readiness hook every service shares.
	// The operational listener (HTTPAddr) is apart from the webhook's: it
	// need not face Azure.
	service.Options

	// WebhookAddr serves the webhook and nothing else (default
	// DefaultWebhookAddr; port 0 picks a free port). OnWebhookListen, when
	// set, is called with its bound address.
	WebhookAddr     string
	OnWebhookListen func(addr string)
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
}

// ErrConfig is returned for an unusable configuration.
var ErrConfig = errors.New("ingest: invalid configuration")

// Run runs ingest until ctx ends; it returns nil after a clean shutdown.
func Run(ctx context.Context, cfg Config) error { return run(ctx, cfg, hooks{}) }

// hooks are where tests act inside a running ingest; production has none.
type hooks struct {
	// afterStore runs between storing a webhook delivery and answering.
	afterStore func(*http.Request)
	// kickGap replaces the least time between passes a backlog asks for.
	kickGap time.Duration
}

func run(ctx context.Context, cfg Config, h hooks) error {
	c, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	c.hooks = h
	svc, err := service.Start(ctx, "ingest", c.Options)
	if err != nil {
		return err
	}
	if err := c.wire(svc); err != nil {
		svc.Stop()
		return errors.Join(err, svc.Wait())
	}
	svc.MarkReady()
	return svc.Wait()
}

// settings is a Config with its defaults applied and what they make.
type settings struct {
	Config
	secrets *eventgrid.Secrets
	tokens  *eventgrid.TokenValidator
	policy  compliance.Policy
	hooks   hooks
}

func (cfg Config) withDefaults() (settings, error) {
	c := settings{Config: cfg, policy: compliance.DefaultPolicy()}
	var err error
	if c.secrets, err = eventgrid.NewSecrets(cfg.WebhookSecrets...); err != nil {
		return c, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if cfg.Entra.Enabled() {
		if c.tokens, err = eventgrid.NewTokenValidator(cfg.Entra); err != nil {
			return c, fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if cfg.RequireWebhookAuth && !c.secrets.Enabled() && c.tokens == nil {
		return c, fmt.Errorf("%w: the webhook needs a shared secret (or Entra ID validation)", ErrConfig)
	}
	switch {
	case c.Limits.MaxClockSkew == 0:
		c.Limits.MaxClockSkew = eventgrid.DefaultMaxClockSkew
	case c.Limits.MaxClockSkew < 0 || c.Limits.MaxClockSkew > MaxEventClockSkew:
		return c, fmt.Errorf("%w: the clock skew allowed for event times is %s, want more than 0 and at most %s", ErrConfig, c.Limits.MaxClockSkew, MaxEventClockSkew)
	}
	if c.Limits.MaxEventBytes <= 0 {
		c.Limits.MaxEventBytes = eventgrid.DefaultMaxEventBytes
	}
	if c.WebhookAddr == "" {
		c.WebhookAddr = DefaultWebhookAddr
	}
	if c.WebhookPath == "" {
		c.WebhookPath = DefaultWebhookPath
	}
	if c.ReconcileInterval == 0 {
		c.ReconcileInterval = DefaultReconcileInterval
	}
	if c.ReconcileGrace <= 0 {
		c.ReconcileGrace = DefaultReconcileGrace
	}
	if c.Concurrency <= 0 {
		c.Concurrency = DefaultConcurrency
	}
	if cfg.Compliance != nil {
		c.policy = *cfg.Compliance
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ARM.Credential != nil && (c.Fetcher == nil || c.Lister == nil) {
		client, err := arm.NewClient(c.ARM)
		if err != nil {
			return c, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		if c.Fetcher == nil {
			c.Fetcher = client
		}
		if c.Lister == nil {
			c.Lister = client
		}
	}
	return c, nil
}

// wire builds ingest's parts on svc's connection and starts them as its
// tasks: the webhook, the normaliser, enrichment, reconcile and the
// namespace pull, as configured.
func (c *settings) wire(svc *service.Service) error {
	ctx, conn, log := svc.Context(), svc.Conn, svc.Log
	tracer := svc.TracerProvider.Tracer("github.com/vigil-cc/vigil/services/ingest")
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		return fmt.Errorf("ingest: bucket %s: %w", events.BucketVMs, err)
	}
	raw, err := newRawStore(conn.NC)
	if err != nil {
		return err
	}
	if fit := raw.maxEventBytes(); c.Limits.MaxEventBytes > fit {
		log.Warn("NATS max_payload limits the event size below Event Grid's 1 MB; raise max_payload to accept every event",
			"max_event_bytes", fit, "max_payload", conn.NC.MaxPayload())
		c.Limits.MaxEventBytes = fit
	}
	m := newMetrics(svc.MeterProvider)
	skew := c.Limits.MaxClockSkew
	proc := &processor{conn: conn, inv: &inventory{kv: kv, now: time.Now, skew: skew},
		policy: c.policy, log: log, m: m, now: time.Now, skew: skew}
	var rec *reconciler
	if c.Lister != nil && len(c.Subscriptions) > 0 && c.ReconcileInterval > 0 {
		rec = newReconciler(proc, c.Lister, c.Subscriptions, c.ReconcileGrace, log.With("component", "reconcile"))
		if c.hooks.kickGap > 0 {
			rec.kickGap = c.hooks.kickGap
		}
	}
	var enricher *arm.Enricher
	if c.Fetcher != nil {
		enricher = c.enricher(proc, m, log, tracer)
		proc.enrich = func(ctx context.Context, vm normalize.VMID, asOf time.Time) {
			if enricher.Request(ctx, vm, asOf) && rec != nil {
				rec.queued(enricher.Pending())
			}
		}
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
	if err := c.serveWebhook(svc, storeFor(OriginEventGrid), m); err != nil {
		return err
	}
	log.Info("ingest running", "secret", c.secrets.Enabled(), "entra", c.tokens != nil,
		"enrichment", enricher != nil, "subscriptions", len(c.Subscriptions), "namespace", c.Namespace != nil, "intake_only", c.IntakeOnly)
	if c.Namespace != nil {
		puller, err := namespace.New(c.namespaceConfig(storeFor(OriginNamespace), m, log))
		if err != nil {
			return fmt.Errorf("%w: %w", ErrConfig, err)
		}
		svc.Go("namespace", puller.Run)
	}
	if c.IntakeOnly {
		return nil
	}
	norm := &normalizer{p: proc, conn: conn, tracer: tracer, workers: c.Concurrency}
	svc.Go("normalize", norm.run)
	if enricher != nil {
		svc.Go("enrich", enricher.Run)
	}
	if rec != nil {
		svc.Go("reconcile", func(ctx context.Context) error { rec.loop(ctx, c.ReconcileInterval); return nil })
	}
	return nil
}

func (c *settings) enricher(proc *processor, m *metrics, log *slog.Logger, tracer trace.Tracer) *arm.Enricher {
	ec := c.Enrichment
	ec.Logger = log
	if ec.Tracer == nil {
		ec.Tracer = tracer
	}
	observe := ec.Observe
	ec.Observe = func(outcome string) {
		m.armRead(outcome)
		if observe != nil {
			observe(outcome)
		}
	}
	return arm.NewEnricher(ec, c.Fetcher, proc.applyEnrichment)
}

// serveWebhook starts the webhook's listener, which serves the webhook
// alone (404 for the rest, 405 for other methods on its path); health and
// metrics are on the operational listener, which need not face Azure.
func (c *settings) serveWebhook(svc *service.Service, store eventgrid.StoreFunc, m *metrics) error {
	hook, err := eventgrid.NewHandler(eventgrid.HandlerConfig{
		Store: store, Secrets: c.secrets, Tokens: c.tokens, Limits: c.Limits,
		MaxBodyBytes: c.MaxBodyBytes, StoreTimeout: c.StoreTimeout, Logger: svc.Log, Observe: m.webhook, AfterStore: c.hooks.afterStore,
	})
	if err != nil {
		return err
	}
	srv, err := telemetry.ListenBare(c.WebhookAddr)
	if err != nil {
		return err
	}
	srv.Handle("POST "+c.WebhookPath, hook)
	srv.Handle("OPTIONS "+c.WebhookPath, hook)
	svc.Log.Info("ingest webhook listening", "url", "http://"+srv.Addr()+c.WebhookPath)
	if c.OnWebhookListen != nil {
		c.OnWebhookListen(srv.Addr())
	}
	svc.Go("webhook", srv.Serve)
	return nil
}

// namespaceConfig is the namespace puller's configuration: its limits at
// most the webhook's, its operations counted.
func (c *settings) namespaceConfig(store eventgrid.StoreFunc, m *metrics, log *slog.Logger) namespace.Config {
	nsCfg := *c.Namespace
	nsCfg.Store = store
	if nsCfg.Limits.MaxEventBytes <= 0 || nsCfg.Limits.MaxEventBytes > c.Limits.MaxEventBytes {
		nsCfg.Limits.MaxEventBytes = c.Limits.MaxEventBytes
	}
	if nsCfg.Limits.MaxClockSkew <= 0 || nsCfg.Limits.MaxClockSkew > c.Limits.MaxClockSkew {
		nsCfg.Limits.MaxClockSkew = c.Limits.MaxClockSkew
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
	return nsCfg
}
