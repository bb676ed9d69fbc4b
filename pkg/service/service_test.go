package service_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
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
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}, Provision: true, Ready: func() { readyCalls.Add(1) }})
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

func TestSharedConnIsNotClosed(t *testing.T) {
	ns := natstest.Start(t)
	ns.JetStream() // provisioned
	conn, err := bus.Connect(t.Context(), bus.Config{URL: ns.URL()})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(t.Context())
	svc := start(t, ctx, service.Options{Conn: conn})
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
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}, Provision: true})
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
	svc := start(t, t.Context(), service.Options{NATS: bus.Config{URL: ns.URL()}, Provision: true})
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
	svc := start(t, ctx, service.Options{NATS: bus.Config{URL: ns.URL()}, Provision: true, HTTPAddr: "127.0.0.1:0", OnListen: func(a string) { addr <- a }})
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
		NATS:      bus.Config{URL: ns.URL()},
		Provision: true,
		HTTPAddr:  "256.0.0.1:0", // cannot be bound
		Logger:    quiet(),
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

// TestStartChecksTopology: a service that is not told to provision checks
// the streams and buckets it uses and refuses to start, naming what is
// missing or different, and leaves the topology as it found it.
func TestStartChecksTopology(t *testing.T) {
	for _, tc := range []struct {
		name    string
		service string
		prepare func(t *testing.T, ctx context.Context, js jetstream.JetStream)
		want    string // substring of the error; "" for success
	}{
		{name: "provisioned", service: "test", prepare: provision},
		{name: "nothing provisioned", service: "test", want: "stream VIGIL_RAW is missing"},
		{name: "a stream missing", service: "keyguard", prepare: func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
			provision(t, ctx, js)
			if err := js.DeleteKeyValue(ctx, events.BucketGrants); err != nil {
				t.Fatal(err)
			}
		}, want: "bucket vigil-grants is missing"},
		{name: "a stream the service does not use", service: "auditor", prepare: func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
			provision(t, ctx, js)
			if err := js.DeleteStream(ctx, events.StreamRaw); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "a stream configured otherwise", service: "ingest", prepare: func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
			provision(t, ctx, js)
			s, err := js.Stream(ctx, events.StreamRaw)
			if err != nil {
				t.Fatal(err)
			}
			cfg := s.CachedInfo().Config
			cfg.MaxAge = time.Hour
			if _, err := js.UpdateStream(ctx, cfg); err != nil {
				t.Fatal(err)
			}
		}, want: "stream VIGIL_RAW differs (have/want): max_age 1h0m0s/168h0m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := natstest.Start(t)
			js, err := jetstream.New(ns.Connect())
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			if tc.prepare != nil {
				tc.prepare(t, ctx, js)
			}
			svc, err := service.Start(ctx, tc.service, service.Options{NATS: bus.Config{URL: ns.URL()}, Logger: quiet()})
			if tc.want == "" {
				if err != nil {
					t.Fatalf("Start = %v, want success", err)
				}
				svc.Stop()
				if err := svc.Wait(); err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, service.ErrTopology) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want ErrTopology saying %q", err, tc.want)
			}
			if _, err := js.Stream(ctx, events.StreamRaw); tc.prepare == nil && err == nil {
				t.Fatal("the check provisioned a stream")
			}
		})
	}
}

func provision(t *testing.T, ctx context.Context, js jetstream.JetStream) {
	t.Helper()
	if err := events.Provision(ctx, js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
}

// TestServiceUsesItsPrincipalsInbox: in operator mode a service connecting
// with its own credentials listens on its principal's inbox prefix (the
// only one its permissions allow), checks the topology with its own
// permissions and works without a permission violation; a prefix set in
// NATS is kept.
func TestServiceUsesItsPrincipalsInbox(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.StartOperator(t, set)
	ns.JetStream() // provisioned by the administrator
	vm := events.VMKey("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
	for _, tc := range []struct {
		p      busauth.Principal
		prefix string
		want   string
	}{
		{p: busauth.Ingest, want: busauth.InboxPrefix(busauth.Ingest)},
		{p: busauth.AttestWorker, want: busauth.InboxPrefix(busauth.AttestWorker)},
		{p: busauth.Keyguard, want: busauth.InboxPrefix(busauth.Keyguard)},
		{p: busauth.Auditor, want: busauth.InboxPrefix(busauth.Auditor)},
		// The agent knows its VM key and sets its prefix itself.
		{p: busauth.Agent, prefix: busauth.AgentInboxPrefix(vm), want: busauth.AgentInboxPrefix(vm)},
	} {
		t.Run(string(tc.p), func(t *testing.T) {
			creds, err := set.Creds(tc.p)
			if tc.p == busauth.Agent {
				creds, err = set.AgentCreds(vm, time.Hour)
			}
			if err != nil {
				t.Fatal(err)
			}
			var asyncErrs atomic.Int32
			o := service.Options{NATS: bus.Config{URL: ns.URL(), UserJWT: creds.JWT, NKeySeed: creds.Seed, InboxPrefix: tc.prefix},
				CoreOnly: tc.p == busauth.Agent, Logger: quiet()}
			svc, err := service.Start(t.Context(), string(tc.p), o)
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			svc.Conn.NC.SetErrorHandler(func(*nats.Conn, *nats.Subscription, error) { asyncErrs.Add(1) })
			if got := svc.Conn.NC.Opts.InboxPrefix; got != tc.want {
				t.Fatalf("inbox prefix %q, want %q", got, tc.want)
			}
			// A request answered on the inbox: the readiness checks
			// ("jetstream" asks the JetStream API).
			svc.MarkReady()
			if err := svc.Conn.NC.Flush(); err != nil {
				t.Fatal(err)
			}
			if got := failing(t, svc.Health); len(got) != 0 {
				t.Fatalf("failing checks %v", got)
			}
			if n := asyncErrs.Load(); n != 0 {
				t.Fatalf("%d asynchronous errors (permission violations)", n)
			}
			svc.Stop()
			if err := svc.Wait(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
