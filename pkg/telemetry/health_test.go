package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/natstest"
)

func serve(t *testing.T, tel *Telemetry, h *Health) *Server {
	t.Helper()
	srv, err := Listen("127.0.0.1:0", tel, h)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv
}

func report(t *testing.T, url string, wantStatus int) Report {
	t.Helper()
	var r Report
	if err := json.Unmarshal([]byte(get(t, url, wantStatus)), &r); err != nil {
		t.Fatalf("GET %s: body is not a report: %v", url, err)
	}
	return r
}

func TestReadinessReflectsFailingCheck(t *testing.T) {
	var broken atomic.Bool
	h := NewHealth()
	h.AddReadiness("nats", func(context.Context) error { return nil })
	h.AddReadiness("jetstream", func(context.Context) error {
		if broken.Load() {
			return errors.New("no meta leader")
		}
		return nil
	})
	srv := serve(t, nil, h)

	r := report(t, srv.URL()+"/readyz", http.StatusOK)
	if r.Status != StatusOK || len(r.Checks) != 2 {
		t.Fatalf("ready report = %+v", r)
	}

	broken.Store(true)
	r = report(t, srv.URL()+"/readyz", http.StatusServiceUnavailable)
	if r.Status != StatusFailing {
		t.Fatalf("status = %q, want failing", r.Status)
	}
	for _, c := range r.Checks {
		want := c.Name != "jetstream"
		if c.OK != want {
			t.Errorf("check %s ok = %v, want %v", c.Name, c.OK, want)
		}
	}
	if err := h.Ready(context.Background()).Err(); err == nil || !strings.Contains(err.Error(), "jetstream: no meta leader") {
		t.Errorf("Report.Err() = %v", err)
	}
	// Liveness does not depend on readiness checks.
	report(t, srv.URL()+"/healthz", http.StatusOK)

	broken.Store(false)
	report(t, srv.URL()+"/readyz", http.StatusOK)
}

func TestCheckTimeoutAndPanic(t *testing.T) {
	h := &Health{Timeout: 50 * time.Millisecond}
	release := make(chan struct{})
	defer close(release)
	h.AddLiveness("hung", func(context.Context) error { <-release; return nil }) // ignores its context
	h.AddLiveness("panics", func(context.Context) error { panic("boom") })
	start := time.Now()
	r := h.Live(context.Background())
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("Live took %s despite a 50ms timeout", el)
	}
	if r.OK() || len(r.Checks) != 2 {
		t.Fatalf("report = %+v", r)
	}
	if !strings.Contains(r.Checks[0].Error, "no answer") || !strings.Contains(r.Checks[1].Error, "panicked: boom") {
		t.Errorf("errors = %q, %q", r.Checks[0].Error, r.Checks[1].Error)
	}
}

func TestHealthMethods(t *testing.T) {
	srv := serve(t, nil, nil)
	resp, err := http.Post(srv.URL()+"/healthz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /healthz: %d, want 405", resp.StatusCode)
	}
	resp, err = http.Head(srv.URL() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("HEAD /readyz: %d", resp.StatusCode)
	}
	// No telemetry: no /metrics.
	get(t, srv.URL()+"/metrics", http.StatusNotFound)
}

func TestNATSChecks(t *testing.T) {
	ns := natstest.Start(t)
	nc := ns.Connect(nats.ReconnectWait(time.Hour)) // stays disconnected once the server is gone
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	h := &Health{Timeout: time.Second}
	h.AddReadiness("nats", NATSConnected(nc))
	h.AddReadiness("jetstream", JetStreamReachable(js))
	if r := h.Ready(context.Background()); !r.OK() {
		t.Fatalf("ready with a running server: %v", r.Err())
	}
	ns.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for nc.Status() == nats.CONNECTED && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	r := h.Ready(context.Background())
	if r.OK() {
		t.Fatal("ready with the server stopped")
	}
	for _, c := range r.Checks {
		if c.OK {
			t.Errorf("check %s passes with the server stopped", c.Name)
		}
	}
}

func TestServerGracefulShutdown(t *testing.T) {
	started := make(chan struct{})
	srv, err := Listen("127.0.0.1:0", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv.Handle("GET /slow", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		time.Sleep(200 * time.Millisecond)
		_, _ = w.Write([]byte("done"))
	}))
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()

	got := make(chan string, 1)
	go func() {
		resp, err := http.Get(srv.URL() + "/slow")
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		got <- string(b)
	}()
	<-started
	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if s := <-got; s != "done" {
		t.Fatalf("request in flight got %q, want done", s)
	}
	if _, err := http.Get(srv.URL() + "/healthz"); err == nil {
		t.Fatal("server still answers after shutdown")
	}
}

func TestListenAddressInUse(t *testing.T) {
	a := serve(t, nil, nil)
	if _, err := Listen(a.Addr(), nil, nil); err == nil || !strings.Contains(err.Error(), a.Addr()) {
		t.Fatalf("Listen on a busy address: %v", err)
	}
}
