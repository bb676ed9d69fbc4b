package evidence

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// tracer returns the tracer of the global provider (a no-op until the
// service installs one), looked up per call so providers set later apply.
func tracer() trace.Tracer { return otel.Tracer("github.com/vigil-cc/vigil/pkg/evidence") }

// traceVerify records a verification span's outcome.
func traceVerify(span trace.Span, res *Result, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "invalid bundle")
		return
	}
	attrs := []attribute.KeyValue{
		attribute.String("vigil.platform", res.Platform),
		attribute.Bool("vigil.genuine", res.Genuine),
		attribute.Bool("vigil.collateral_unavailable", res.Unavailable),
	}
	if len(res.Failures) > 0 {
		attrs = append(attrs, attribute.String("vigil.failure", res.Failures[0].Code))
	}
	span.SetAttributes(attrs...)
}

func startSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return tracer().Start(ctx, name, trace.WithAttributes(attrs...))
}
