package bus

import (
	"context"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier adapts nats.Header to OpenTelemetry propagation. Keys are
// written and read lower-case ("traceparent", "tracestate"), unlike
// propagation.HeaderCarrier, which canonicalises them to HTTP style.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier{}

// Get returns the first value of key, matched without regard to case.
func (h HeaderCarrier) Get(key string) string {
	if v, ok := h[key]; ok && len(v) > 0 {
		return v[0]
	}
	lk := strings.ToLower(key)
	for k, v := range h {
		if strings.ToLower(k) == lk && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// Set stores value under the lower-cased key.
func (h HeaderCarrier) Set(key, value string) { h[strings.ToLower(key)] = []string{value} }

// Keys lists the header keys.
func (h HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// InjectTrace writes the trace context of ctx into h with the global
// propagator (W3C trace context unless configured otherwise).
func InjectTrace(ctx context.Context, h nats.Header) {
	propagator().Inject(ctx, HeaderCarrier(h))
}

// ExtractTrace returns ctx carrying the remote trace context found in h.
func ExtractTrace(ctx context.Context, h nats.Header) context.Context {
	if h == nil {
		return ctx
	}
	return propagator().Extract(ctx, HeaderCarrier(h))
}

// defaultPropagator is what propagator falls back to; it is never changed.
var defaultPropagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// propagator is the global text map propagator, or W3C trace context and
// baggage when none was installed (the otel default is a no-op).
func propagator() propagation.TextMapPropagator {
	p := otel.GetTextMapPropagator()
	if len(p.Fields()) == 0 {
		return defaultPropagator
	}
	return p
}

// TraceParent returns the W3C traceparent of the span in ctx ("" when it
// has none), for a record that outlives any message (a KV entry) whose
// readers continue the trace of the operation that wrote it.
func TraceParent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(ctx, c)
	return c["traceparent"]
}

// WithTraceParent returns ctx carrying the remote span of a traceparent
// written by TraceParent. The value is only ever a span's parent: one that
// is not a well-formed traceparent leaves ctx as it is.
func WithTraceParent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagation.TraceContext{}.Extract(ctx, propagation.MapCarrier{"traceparent": traceparent})
}
