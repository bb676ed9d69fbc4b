package arm_test

import (
	"context"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

const (
	sub = "00000000-0000-4000-8000-0000000000aa"
	rg  = "rg"
)

type results struct {
	mu    sync.Mutex
	got   []arm.Result
	spans []trace.SpanContext // the span each result was applied in
	ch    chan arm.Result
}

func newResults() *results { return &results{ch: make(chan arm.Result, 100)} }

func (r *results) apply(ctx context.Context, res arm.Result) error {
	r.mu.Lock()
	r.got = append(r.got, res)
	r.spans = append(r.spans, trace.SpanContextFromContext(ctx))
	r.mu.Unlock()
	r.ch <- res
	return nil
}

func (r *results) wait(t *testing.T, d time.Duration) arm.Result {
	t.Helper()
	select {
	case res := <-r.ch:
		return res
	case <-time.After(d):
		t.Fatal("no enrichment result")
		return arm.Result{}
	}
}

func setup(t *testing.T, cfg arm.EnricherConfig) (*armfake.ARM, *arm.Enricher, *results, normalize.VMID) {
	t.Helper()
	fa := armfake.New()
	id := normalize.NewVMID(sub, rg, "vm1")
	fa.PutVM(armfake.CompliantVM(sub, rg, "vm1", "vmid-1"))
	fa.PutNIC(armfake.NIC("/subscriptions/"+sub+"/resourceGroups/"+rg+"/providers/Microsoft.Network/networkInterfaces/vm1-nic", false))
	client, err := arm.NewClient(arm.Config{Credential: fa.Credential(), ClientOptions: fa.ClientOptions()})
	if err != nil {
		t.Fatal(err)
	}
	res := newResults()
	e := arm.NewEnricher(cfg, client, res.apply)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = e.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return fa, e, res, id
}

// TestReadContinuesTheRequestersTrace: the read is a span under the span
// of the batch's first request, and the result is applied within it, so
// that what ingest writes goes on in the trace of the VM's event.
func TestReadContinuesTheRequestersTrace(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	_, e, res, id := setup(t, arm.EnricherConfig{Debounce: 100 * time.Millisecond, Tracer: tp.Tracer("test")})
	first, firstSpan := tp.Tracer("test").Start(context.Background(), "event 1")
	second, secondSpan := tp.Tracer("test").Start(context.Background(), "event 2")
	e.Request(first, id, time.Now())
	e.Request(second, id, time.Now())
	e.Request(context.Background(), id, time.Now())
	res.wait(t, 10*time.Second)
	firstSpan.End()
	secondSpan.End()

	// The read's span ends after the result is applied: wait for it.
	var read tracetest.SpanStub
	for deadline := time.Now().Add(10 * time.Second); read.Name == ""; {
		for _, s := range exp.GetSpans() {
			if s.Name == "ingest.enrich" {
				read = s
			}
		}
		if read.Name == "" && time.Now().After(deadline) {
			t.Fatal("the read's span did not end")
		}
		time.Sleep(5 * time.Millisecond)
	}
	want := firstSpan.SpanContext()
	if read.Parent.SpanID() != want.SpanID() || read.SpanContext.TraceID() != want.TraceID() {
		t.Fatalf("the read's span %v has parent %v, want a child of the first request's span %v", read.SpanContext, read.Parent, want)
	}
	res.mu.Lock()
	applied := res.spans[0]
	res.mu.Unlock()
	if applied.SpanID() != read.SpanContext.SpanID() {
		t.Fatalf("the result was applied in span %v, want the read's span %v", applied, read.SpanContext)
	}
}

func TestBurstMakesOneCall(t *testing.T) {
	fa, e, res, id := setup(t, arm.EnricherConfig{Debounce: 300 * time.Millisecond, Fresh: time.Millisecond})
	base := time.Now()
	for i := range 50 {
		e.Request(context.Background(), id, base.Add(time.Duration(i)*time.Millisecond))
		time.Sleep(2 * time.Millisecond)
	}
	r := res.wait(t, 10*time.Second)
	if r.Facts.VM == nil || *r.Facts.VM.Properties.VMID != "vmid-1" {
		t.Fatalf("result %+v", r)
	}
	// A request for an event older than the read needs no read of its own.
	e.Request(context.Background(), id, base)
	time.Sleep(700 * time.Millisecond)
	if n := fa.Gets(*r.Facts.VM.ID); n != 1 {
		t.Fatalf("%d ARM reads for a burst of 50 events, want 1", n)
	}
	if fa.NICGets() != 1 {
		t.Errorf("NIC read %d times", fa.NICGets())
	}
	// A newer event after the read causes a second read; the NIC is cached.
	e.Request(context.Background(), id, time.Now().Add(10*time.Second))
	res.wait(t, 10*time.Second)
	if n := fa.Gets(*r.Facts.VM.ID); n != 2 || fa.NICGets() != 1 {
		t.Fatalf("reads %d, NIC reads %d", n, fa.NICGets())
	}
}

func TestThrottledHonoursRetryAfter(t *testing.T) {
	fa, e, res, id := setup(t, arm.EnricherConfig{Debounce: 10 * time.Millisecond})
	fa.Throttle(1, "2")
	start := time.Now()
	e.Request(context.Background(), id, time.Now())
	r := res.wait(t, 15*time.Second)
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("read again after %s, before Retry-After of 2 s", took)
	}
	if r.Facts.VM == nil || fa.Gets(id.ResourceID) != 2 {
		t.Fatalf("reads %d, result %+v", fa.Gets(id.ResourceID), r)
	}
}

func TestNotFoundIsConfirmed(t *testing.T) {
	fa, e, res, id := setup(t, arm.EnricherConfig{Debounce: 10 * time.Millisecond, NotFoundConfirm: 300 * time.Millisecond})
	fa.DeleteVM(id.ResourceID)
	e.Request(context.Background(), id, time.Now())
	r := res.wait(t, 10*time.Second)
	if !r.NotFound || fa.Gets(id.ResourceID) != 2 {
		t.Fatalf("not found %v after %d reads", r.NotFound, fa.Gets(id.ResourceID))
	}
}

func TestOutageRetriesWithBackoff(t *testing.T) {
	fa, e, res, id := setup(t, arm.EnricherConfig{Debounce: 10 * time.Millisecond, RetryBase: 50 * time.Millisecond})
	fa.Fail(3)
	e.Request(context.Background(), id, time.Now())
	r := res.wait(t, 10*time.Second)
	if r.Facts.VM == nil || fa.Gets(id.ResourceID) != 4 {
		t.Fatalf("reads %d, result %+v", fa.Gets(id.ResourceID), r)
	}
	// The entry is completed right after the result is applied.
	deadline := time.Now().Add(5 * time.Second)
	for e.Pending() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d pending after success", e.Pending())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPerVMBudget(t *testing.T) {
	// A burst of 3 then 1 per 500 ms for one VM: the fourth read waits.
	fa, e, res, id := setup(t, arm.EnricherConfig{Debounce: time.Millisecond, Fresh: time.Millisecond,
		PerVMBurst: 3, PerVMRate: 2})
	start := time.Now()
	for range 4 {
		e.Request(context.Background(), id, time.Now().Add(time.Hour))
		res.wait(t, 10*time.Second)
	}
	if took := time.Since(start); took < 400*time.Millisecond {
		t.Fatalf("4 reads took %s; the per-VM budget allows 3 at once then 2/s", took)
	}
	if fa.Gets(id.ResourceID) != 4 {
		t.Fatalf("reads %d", fa.Gets(id.ResourceID))
	}
}
