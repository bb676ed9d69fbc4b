package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func testConfig(t *testing.T) Config {
	t.Helper()
	return Config{
		Listen:          "127.0.0.1:0",
		DataDir:         t.TempDir(),
		Logger:          quietLogger(),
		ShutdownTimeout: 5 * time.Second,
		Telemetry:       newTelemetry(t),
	}
}

func newTelemetry(t *testing.T) *telemetry.Telemetry {
	t.Helper()
	tel, err := telemetry.Setup(context.Background(), telemetry.Config{Service: "vigil-dev-test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

func start(t *testing.T, cfg Config) *Env {
	t.Helper()
	env, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(env.Close)
	return env
}

func TestStartProvisionsEverything(t *testing.T) {
	cfg := testConfig(t)
	env := start(t, cfg)
	if !strings.HasPrefix(env.URL, "nats://127.0.0.1:") || strings.HasSuffix(env.URL, ":0") {
		t.Fatalf("URL = %q", env.URL)
	}
	if env.StoreDir() != filepath.Join(cfg.DataDir, "nats") {
		t.Errorf("StoreDir = %s", env.StoreDir())
	}
	if _, err := os.Stat(filepath.Join(env.StoreDir(), "jetstream")); err != nil {
		t.Errorf("no JetStream store under %s: %v", env.StoreDir(), err)
	}
	ctx := context.Background()
	for _, s := range events.Streams(events.Topology{}) {
		if _, err := env.JS.Stream(ctx, s.Name); err != nil {
			t.Errorf("stream %s: %v", s.Name, err)
		}
	}
	for _, b := range events.Buckets(events.Topology{}) {
		if _, err := env.JS.KeyValue(ctx, b.Bucket); err != nil {
			t.Errorf("bucket %s: %v", b.Bucket, err)
		}
	}
	if r := env.Health.Ready(ctx); !r.OK() {
		t.Errorf("not ready: %v", r.Err())
	}
	var banner bytes.Buffer
	env.Banner(&banner)
	if !strings.Contains(banner.String(), "vigil events tail --nats-url "+env.URL+"\n") {
		t.Errorf("banner lacks the tail command:\n%s", banner.String())
	}
}

func TestDataSurvivesRestart(t *testing.T) {
	cfg := testConfig(t)
	env := start(t, cfg)
	e, err := events.New(events.TypePolicy, "test", "", map[string]string{"name": "p"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := e.Marshal()
	if _, err := env.JS.Publish(context.Background(), events.PolicySubject("p", "test"), b); err != nil {
		t.Fatal(err)
	}
	env.Close()

	env2 := start(t, cfg)
	s, err := env2.JS.Stream(context.Background(), events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("VIGIL_EVENTS has %d messages after a restart, want 1", n)
	}
}

func TestRunStopsOnContext(t *testing.T) {
	env := start(t, testConfig(t))
	ctx, cancel := context.WithCancel(context.Background())
	var stopped atomic.Int32
	comp := func(name string) Component {
		return Component{Name: name, Run: func(ctx context.Context, e *Env) error {
			if e != env {
				return errors.New("wrong env")
			}
			<-ctx.Done()
			stopped.Add(1)
			return ctx.Err() // returning the cancellation is a clean stop
		}}
	}
	done := make(chan error, 1)
	go func() {
		done <- env.Run(ctx, comp("a"), comp("b"), Component{Name: "short", Run: func(context.Context, *Env) error { return nil }})
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("Run returned before its context ended: %v", err)
	default:
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if stopped.Load() != 2 {
		t.Errorf("%d components saw the stop, want 2", stopped.Load())
	}
	if env.NATS.Running() {
		t.Error("NATS still running after Run")
	}
}

func TestRunDuration(t *testing.T) {
	cfg := testConfig(t)
	cfg.Duration = 300 * time.Millisecond
	env := start(t, cfg)
	start := time.Now()
	if err := env.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if el := time.Since(start); el < 300*time.Millisecond || el > 10*time.Second {
		t.Errorf("Run with Duration 300ms took %s", el)
	}
}

func TestRunFailureStopsTheRest(t *testing.T) {
	boom := errors.New("boom")
	tests := []struct {
		name string
		bad  Component
		want string
	}{
		{"error", Component{Name: "ingest", Run: func(context.Context, *Env) error { return boom }}, "devenv: ingest: boom"},
		{"panic", Component{Name: "auditor", Run: func(context.Context, *Env) error { panic("kaputt") }}, "devenv: auditor: panic: kaputt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := start(t, testConfig(t))
			var otherStopped atomic.Bool
			other := Component{Name: "keyguard", Run: func(ctx context.Context, _ *Env) error {
				<-ctx.Done()
				otherStopped.Store(true)
				return nil
			}}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := env.Run(ctx, other, tc.bad)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Run = %v, want %q", err, tc.want)
			}
			if tc.name == "error" && !errors.Is(err, boom) {
				t.Errorf("error does not wrap the component's: %v", err)
			}
			if !otherStopped.Load() {
				t.Error("the other component was not stopped")
			}
			if ctx.Err() != nil {
				t.Error("Run waited for the test deadline")
			}
		})
	}
}

func TestRunShutdownTimeout(t *testing.T) {
	cfg := testConfig(t)
	cfg.ShutdownTimeout = 200 * time.Millisecond
	cfg.Duration = 50 * time.Millisecond
	env := start(t, cfg)
	release := make(chan struct{})
	defer close(release)
	stuck := Component{Name: "stuck", Run: func(context.Context, *Env) error { <-release; return nil }}
	err := env.Run(context.Background(), stuck)
	if err == nil || !strings.Contains(err.Error(), "1 component(s) did not stop within 200ms") {
		t.Fatalf("Run = %v", err)
	}
}

func TestOpsEndpoints(t *testing.T) {
	cfg := testConfig(t)
	cfg.OpsListen = "127.0.0.1:0"
	env := start(t, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var failing atomic.Bool
	go func() {
		done <- env.Run(ctx, Component{Name: "svc", Run: func(ctx context.Context, e *Env) error {
			e.Health.AddReadiness("svc", func(context.Context) error {
				if failing.Load() {
					return errors.New("not yet")
				}
				return nil
			})
			<-ctx.Done()
			return nil
		}})
	}()
	base := env.Ops.URL()
	waitStatus(t, base+"/readyz", http.StatusOK)
	body := waitStatus(t, base+"/metrics", http.StatusOK)
	if !strings.Contains(body, `service_name="vigil-dev-test"`) {
		t.Errorf("/metrics lacks the shared telemetry's target_info")
	}
	failing.Store(true)
	waitStatus(t, base+"/readyz", http.StatusServiceUnavailable)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("ops server still answers after Run")
	}
}

func waitStatus(t *testing.T, url string, want int) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return string(b)
			}
			err = fmt.Errorf("status %d: %s", resp.StatusCode, b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s: %v, want %d", url, err, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestStartBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := testConfig(t)
	cfg.Listen = ln.Addr().String()
	start := time.Now()
	_, err = Start(context.Background(), cfg)
	if !errors.Is(err, ErrListen) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Start on a busy port = %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %s to report a busy port", el)
	}
}

func TestStartBusyOpsPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.Listen = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.OpsListen = ln.Addr().String()
	_, err = Start(context.Background(), cfg)
	if !errors.Is(err, ErrListen) || !strings.Contains(err.Error(), ln.Addr().String()) {
		t.Fatalf("Start with a busy ops port = %v", err)
	}
	// What Start set up was released: the NATS port is free again.
	cfg.OpsListen = ""
	start(t, cfg)
}

func TestStartBadListen(t *testing.T) {
	for _, l := range []string{"4222", "127.0.0.1:http", "127.0.0.1:70000"} {
		cfg := testConfig(t)
		cfg.Listen = l
		if _, err := Start(context.Background(), cfg); !errors.Is(err, ErrListen) {
			t.Errorf("Listen %q: err = %v", l, err)
		}
	}
}
