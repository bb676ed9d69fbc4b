// Package telemetry sets up what every Vigil process needs to be observed:
// OpenTelemetry tracer and meter providers configured from the standard
// OTEL_* environment variables, a W3C trace-context propagator, a Prometheus
// /metrics handler on a registry of its own, a JSON slog logger that stamps
// trace and span ids, liveness and readiness checks, and an HTTP server that
// serves /healthz, /readyz and /metrics with graceful shutdown.
//
// Nothing here is package-level state: Setup returns a *Telemetry that owns
// its providers and registry and must be shut down by the caller. Installing
// the providers as the OpenTelemetry globals (which instrumented libraries
// use) is an option of Setup.
//
// Environment variables honoured by Setup:
//
//	OTEL_SDK_DISABLED                       true: no-op tracer and meter providers
//	OTEL_SERVICE_NAME                       service.name (overrides Config.Service)
//	OTEL_RESOURCE_ATTRIBUTES                key=value,... resource attributes
//	OTEL_TRACES_SAMPLER, _ARG               always_on, always_off, traceidratio,
//	                                        parentbased_* (default parentbased_always_on)
//	OTEL_TRACES_EXPORTER                    otlp or none; unset: otlp when an endpoint is set
//	OTEL_EXPORTER_OTLP_ENDPOINT             OTLP/HTTP base URL (…/v1/traces is appended)
//	OTEL_EXPORTER_OTLP_TRACES_ENDPOINT      OTLP/HTTP traces URL, used as is
//	OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL    http/protobuf (the only one supported)
//	OTEL_EXPORTER_OTLP_[TRACES_]HEADERS, _TIMEOUT, _COMPRESSION, _CERTIFICATE, ...
//	                                        read by the OTLP/HTTP exporter itself
//	OTEL_PROPAGATORS                        tracecontext, baggage or none (default both)
//
// Metrics are exposed for scraping in the Prometheus text format; they are
// not pushed over OTLP.
package telemetry
