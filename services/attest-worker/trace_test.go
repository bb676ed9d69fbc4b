package attestworker

import (
	"context"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// TestTraceFromIngestJobReachesTheVerdict checks that the trace of a job
// from ingest continues through the challenge into the stored verdict,
// while a scheduled attestation starts a trace of its own.
func TestTraceFromIngestJobReachesTheVerdict(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	wc, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: "traced", TracerProvider: tp, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wc.Close() })
	f := newFleet(t, ctx, conn, 1, sim.VMConfig{})
	v := f.vms[0]
	runWorker(t, testConfig(wc, "w1"))

	jctx, root := tp.Tracer("test").Start(context.Background(), "ingest: VM started")
	if _, err := wc.PublishJob(jctx, "test", events.Job{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), Reason: "started"}); err != nil {
		t.Fatal(err)
	}
	root.End()
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, v)
	waitFor(t, 15*time.Second, "a scheduled re-attestation", func() (bool, string) { return len(verdictsOf(t, ctx, conn.JS, v.VMKey())) >= 2, "" })

	msgs := streamEvents(t, ctx, conn.JS, events.StreamEvents, events.VerdictSubject(v.VMKey()))
	traceOf := func(i int) trace.TraceID {
		sc := trace.SpanContextFromContext(bus.ExtractTrace(context.Background(), msgs[i].Headers()))
		return sc.TraceID()
	}
	if got := traceOf(0); got != root.SpanContext().TraceID() {
		t.Fatalf("first verdict in trace %s, want the ingest trace %s", got, root.SpanContext().TraceID())
	}
	if got := traceOf(1); !got.IsValid() || got == root.SpanContext().TraceID() {
		t.Fatalf("scheduled verdict in trace %s: want a trace of its own", got)
	}
	// The challenge is a span of the job's trace.
	found := false
	for _, s := range rec.Ended() {
		if s.Name() == "request "+events.ChallengeSubject(v.VMKey()) && s.SpanContext().TraceID() == root.SpanContext().TraceID() {
			found = true
		}
	}
	if !found {
		t.Fatal("no challenge span in the ingest trace")
	}
}
