package bus

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/trace"
)

func TestTraceParentRoundTrip(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	tp := TraceParent(trace.ContextWithSpanContext(context.Background(), sc))
	if want := "00-0102030405060708090a0b0c0d0e0f10-0102030405060708-01"; tp != want {
		t.Fatalf("TraceParent = %q, want %q", tp, want)
	}
	got := trace.SpanContextFromContext(WithTraceParent(context.Background(), tp))
	if got.TraceID() != sc.TraceID() || got.SpanID() != sc.SpanID() || !got.IsRemote() {
		t.Fatalf("WithTraceParent(%q) = %v, want the remote span %v", tp, got, sc)
	}
	if tp := TraceParent(context.Background()); tp != "" {
		t.Fatalf("TraceParent without a span = %q, want empty", tp)
	}
}

func TestWithTraceParentIgnoresMalformed(t *testing.T) {
	for _, tp := range []string{
		"",
		"garbage",
		"00-00000000000000000000000000000000-0102030405060708-01", // zero trace id
		"00-0102030405060708090a0b0c0d0e0f10-0000000000000000-01", // zero span id
		"ff-0102030405060708090a0b0c0d0e0f10-0102030405060708-01", // forbidden version
		"00-0102030405060708090a0b0c0d0e0f1-0102030405060708-01",  // short trace id
	} {
		if sc := trace.SpanContextFromContext(WithTraceParent(context.Background(), tp)); sc.IsValid() {
			t.Errorf("WithTraceParent(%q) gave the span %v, want none", tp, sc)
		}
	}
}
