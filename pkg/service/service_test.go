package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func start(t *testing.T, ctx context.Context, o service.Options) *service.Service {
	t.Helper()
	if o.Logger == nil {
		o.Logger = quiet()
	}
	svc, err := service.Start(ctx, "test", o)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	return svc
}

// failing returns the names of the failing readiness checks.
func failing(t *testing.T, h *telemetry.Health) map[string]bool {
	t.Helper()
	rep := h.Ready(t.Context())
	out := map[string]bool{}
	for _, c := range rep.Checks {
		if !c.OK {
			out[c.Name] = true
		}
	}
	return out
}

func TestStartProvisionsAndChecksReadiness(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var readyCalls atomic.Int32
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}, Ready: func() { readyCalls.Add(1) }})
	if _, err := svc.Conn.JS.Stream(ctx, events.StreamEvents); err != nil {
		t.Fatalf("stream %s not provisioned: %v", events.StreamEvents, err)
	}
	if got := failing(t, svc.Health); !got["test"] || len(got) != 1 {
		t.Fatalf("before MarkReady failing checks = %v, want only the service's own", got)
	}
	svc.MarkReady()
	svc.MarkReady()
	if got := failing(t, svc.Health); len(got) != 0 {
		t.Fatalf("after MarkReady failing checks = %v, want none", got)
	}
	if n := readyCalls.Load(); n != 1 {
		t.Fatalf("Options.Ready called %d times, want 1", n)
	}
	svc.MarkUnready()
	if got := failing(t, svc.Health); !got["test"] {
		t.Fatalf("after MarkUnready failing checks = %v, want the service's own", got)
	}
	cancel()
	if err := svc.Wait(); err != nil {
		t.Fatalf("Wait after cancel = %v, want nil", err)
	}
	if !svc.Conn.NC.IsClosed() {
		t.Fatal("the connection the service opened is still open after Wait")
	}
}

func TestSharedConnIsNotClosedAndNotProvisioned(t *testing.T) {
	ns := natstest.Start(t)
	conn, err := bus.Connect(t.Context(), bus.Config{URL: ns.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(t.Context())
	svc := start(t, ctx, service.Options{Conn: conn, SkipProvision: true})
	if _, err := conn.JS.Stream(ctx, events.StreamEvents); err == nil {
		t.Fatal("SkipProvision provisioned the streams")
	}
	cancel()
	if err := svc.Wait(); err != nil {
		t.Fatal(err)
	}
	if conn.NC.IsClosed() {
		t.Fatal("Wait closed a shared connection")
	}
}

// A service without tasks (its work done by subscriptions) runs until its
// context ends.
func TestWaitWithoutTasksRunsUntilStopped(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithCancel(t.Context())
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}})
	done := make(chan error, 1)
	go func() { done <- svc.Wait() }()
	// Wait must still be waiting once a request has made the round trip.
	if err := svc.Conn.NC.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before the context ended", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Wait = %v, want nil", err)
	}
}

func TestFailingTaskStopsTheOthers(t *testing.T) {
	ns := natstest.Start(t)
	svc := start(t, t.Context(), service.Options{NATS: bus.Config{URL: ns.URL()}})
	boom := errors.New("boom")
	stopped := make(chan struct{})
	svc.Go("waits", func(ctx context.Context) error {
		<-ctx.Done()
		close(stopped)
		return ctx.Err() // a task stopped by the service's context is not a failure
	})
	svc.Go("fails", func(context.Context) error { return boom })
	err := svc.Wait()
	if !errors.Is(err, boom) {
		t.Fatalf("Wait = %v, want boom", err)
	}
	if want := "test: fails: boom"; err.Error() != want {
		t.Fatalf("Wait = %q, want %q", err, want)
	}
	select {
	case <-stopped:
	default:
		t.Fatal("Wait returned before the other task stopped")
	}
}

func TestOpsListenerServesHealth(t *testing.T) {
	ns := natstest.Start(t)
	ctx, cancel := context.WithCancel(t.Context())
	addr := make(chan string, 1)
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}, HTTPAddr: "127.0.0.1:0", OnListen: func(a string) { addr <- a }})
	base := "http://" + <-addr
	get := func() (int, telemetry.Report) {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var rep telemetry.Report
		if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, rep
	}
	if code, _ := get(); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before MarkReady = %d, want 503", code)
	}
	svc.MarkReady()
	if code, rep := get(); code != http.StatusOK {
		t.Fatalf("/readyz after MarkReady = %d (%+v), want 200", code, rep)
	}
	cancel()
	if err := svc.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/readyz"); err == nil {
		t.Fatal("the ops listener still answers after Wait")
	}
}

func TestStartFailureLeavesNothingOpen(t *testing.T) {
	ns := natstest.Start(t)
	_, err := service.Start(t.Context(), "test", service.Options{
		NATS:     bus.Config{URL: ns.URL()},
		HTTPAddr: "256.0.0.1:0", // cannot be bound
		Logger:   quiet(),
	})
	if err == nil {
		t.Fatal("Start with an address that cannot be bound succeeded")
	}
	// The server counts the connection Start opened until it is closed.
	deadline := time.Now().Add(5 * time.Second)
	for ns.Embedded().NumClients() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Start failed but left %d connection(s) open", ns.Embedded().NumClients())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestStartGivesUpWhenContextEnds(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err := service.Start(ctx, "test", service.Options{NATS: bus.Config{URL: "nats://127.0.0.1:1"}, Logger: quiet()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start without a server = %v, want the context's error", err)
	}
}
