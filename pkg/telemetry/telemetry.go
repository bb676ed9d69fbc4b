package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// Config says how to set up telemetry for one process.
type Config struct {
	// Service is the default service.name (for example "vigil-ingest");
	// OTEL_SERVICE_NAME and service.name in OTEL_RESOURCE_ATTRIBUTES
	// override it.
	Service string
	// Version becomes service.version when set.
	Version string
	// SetGlobal installs the tracer provider, meter provider and propagator
	// as the OpenTelemetry globals, for libraries that use otel.Tracer and
	// friends. Shutdown does not undo it.
	SetGlobal bool
	// Logger receives OpenTelemetry's internal errors (for example a
	// collector that cannot be reached) when SetGlobal is set.
	Logger *slog.Logger
	// SpanExporter, when set, receives every ended span synchronously in
	// addition to any exporter configured from the environment. Tests use
	// it with an in-memory exporter.
	SpanExporter sdktrace.SpanExporter
	// NoRuntimeMetrics leaves the Go runtime and process collectors off the
	// Prometheus registry.
	NoRuntimeMetrics bool
}

// Telemetry owns one process's tracer and meter providers and the
// Prometheus registry behind its /metrics handler.
type Telemetry struct {
	// TracerProvider creates tracers; an *sdktrace.TracerProvider unless
	// OTEL_SDK_DISABLED is true.
	TracerProvider trace.TracerProvider
	// MeterProvider creates meters whose instruments appear on /metrics.
	MeterProvider metric.MeterProvider
	// Propagator carries trace context (W3C traceparent/tracestate) and
	// baggage across process boundaries.
	Propagator propagation.TextMapPropagator
	// Registry is the Prometheus registry /metrics serves. Other collectors
	// may be registered on it.
	Registry *prometheus.Registry
	// Resource describes this process (service.name, host, process, ...).
	Resource *resource.Resource
	// TracesExported reports whether spans leave the process over OTLP.
	TracesExported bool

	mu       sync.Mutex
	shutdown []func(context.Context) error
}

// Setup builds tracer and meter providers from cfg and the OTEL_*
// environment (see the package documentation). A configuration error names
// the variable at fault. The caller must call Shutdown to flush spans.
func Setup(ctx context.Context, cfg Config) (*Telemetry, error) {
	env, err := readEnv(lookupEnv)
	if err != nil {
		return nil, err
	}
	res, err := buildResource(ctx, cfg)
	if err != nil {
		return nil, err
	}
	t := &Telemetry{
		Registry:   prometheus.NewRegistry(),
		Resource:   res,
		Propagator: env.propagator,
	}
	if !cfg.NoRuntimeMetrics {
		t.Registry.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
	}

	if env.sdkDisabled {
		t.TracerProvider = tracenoop.NewTracerProvider()
		t.MeterProvider = metricnoop.NewMeterProvider()
	} else {
		if err := t.setupTraces(ctx, cfg, env); err != nil {
			return nil, err
		}
		if err := t.setupMetrics(); err != nil {
			_ = t.Shutdown(ctx)
			return nil, err
		}
	}

	if cfg.SetGlobal {
		otel.SetTracerProvider(t.TracerProvider)
		otel.SetMeterProvider(t.MeterProvider)
		otel.SetTextMapPropagator(t.Propagator)
		if cfg.Logger != nil {
			l := cfg.Logger
			otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
				l.Warn("opentelemetry", "err", err)
			}))
		}
	}
	return t, nil
}

func (t *Telemetry) setupTraces(ctx context.Context, cfg Config, env settings) error {
	opts := []sdktrace.TracerProviderOption{
		sdktrace.WithResource(t.Resource),
		sdktrace.WithSampler(env.sampler),
	}
	if env.otlpTraces {
		// The exporter reads the endpoint, headers, timeout, compression
		// and TLS settings from OTEL_EXPORTER_OTLP_* itself.
		exp, err := otlptracehttp.New(ctx)
		if err != nil {
			return fmt.Errorf("telemetry: OTLP/HTTP trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
		t.TracesExported = true
	}
	if cfg.SpanExporter != nil {
		opts = append(opts, sdktrace.WithSyncer(cfg.SpanExporter))
	}
	tp := sdktrace.NewTracerProvider(opts...)
	t.TracerProvider = tp
	t.shutdown = append(t.shutdown, tp.Shutdown)
	return nil
}

func (t *Telemetry) setupMetrics() error {
	exp, err := otelprom.New(otelprom.WithRegisterer(t.Registry))
	if err != nil {
		return fmt.Errorf("telemetry: prometheus exporter: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(
		sdkmetric.WithResource(t.Resource),
		sdkmetric.WithReader(exp),
	)
	t.MeterProvider = mp
	t.shutdown = append(t.shutdown, mp.Shutdown)
	return nil
}

// buildResource describes the process. Attributes from the environment win
// over Config.Service and Version; an unparsable OTEL_RESOURCE_ATTRIBUTES is
// an error, while a host or process detail that cannot be read (a container
// without a passwd entry, say) is left out.
func buildResource(ctx context.Context, cfg Config) (*resource.Resource, error) {
	fromEnv, err := resource.New(ctx, resource.WithFromEnv())
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	var attrs []attribute.KeyValue
	if cfg.Service != "" {
		attrs = append(attrs, attribute.String("service.name", cfg.Service))
	}
	if cfg.Version != "" {
		attrs = append(attrs, attribute.String("service.version", cfg.Version))
	}
	detected, err := resource.New(ctx,
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithProcessPID(),
		resource.WithProcessExecutableName(),
		resource.WithProcessRuntimeName(),
		resource.WithProcessRuntimeVersion(),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	res, err := resource.Merge(detected, resource.NewSchemaless(attrs...))
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	res, err = resource.Merge(res, fromEnv)
	if err != nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	return res, nil
}

// Tracer returns a tracer of the provider for an instrumentation scope
// (by convention the import path of the instrumented package).
func (t *Telemetry) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return t.TracerProvider.Tracer(name, opts...)
}

// Meter returns a meter of the provider for an instrumentation scope.
func (t *Telemetry) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return t.MeterProvider.Meter(name, opts...)
}

// MetricsHandler serves the registry in the Prometheus exposition formats.
func (t *Telemetry) MetricsHandler() http.Handler {
	return promhttp.HandlerFor(t.Registry, promhttp.HandlerOpts{
		Registry:          t.Registry, // promhttp_* metrics about the handler itself
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// ForceFlush exports every ended span that is still buffered.
func (t *Telemetry) ForceFlush(ctx context.Context) error {
	if tp, ok := t.TracerProvider.(*sdktrace.TracerProvider); ok {
		return tp.ForceFlush(ctx)
	}
	return nil
}

// Shutdown flushes buffered spans and stops the providers; ctx bounds how
// long it waits for the collector. It is safe to call more than once.
func (t *Telemetry) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for i := len(t.shutdown) - 1; i >= 0; i-- {
		if err := t.shutdown[i](ctx); err != nil {
			errs = append(errs, err)
		}
	}
	t.shutdown = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("telemetry: shutdown: %w", err)
	}
	return nil
}
