package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/enroll"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/agent"
)

// quotingSource is an evidence source that records what it was asked to
// quote.
type quotingSource struct {
	mu    sync.Mutex
	extra [][]byte
}

func (s *quotingSource) Evidence(_ context.Context, nonce, extra []byte) ([]byte, error) {
	s.mu.Lock()
	s.extra = append(s.extra, extra)
	s.mu.Unlock()
	return json.Marshal(map[string]any{"version": "test", "nonce": nonce})
}

// issuingKeyguard answers the enrollment API as keyguard does, issuing
// real agent JWTs of set valid for ttl, after checking that the request
// quotes its binding (the evidence itself is keyguard's tests' matter).
func issuingKeyguard(t *testing.T, iss *busauth.AgentIssuer, src *quotingSource, ttl time.Duration, issued *atomic.Int32) *httptest.Server {
	t.Helper()
	nonce := bytes.Repeat([]byte{5}, enroll.NonceSize)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+enroll.PathNonce, func(w http.ResponseWriter, r *http.Request) {
		enroll.WriteJSON(w, http.StatusOK, enroll.NonceResponse{Nonce: nonce, ExpiresAt: time.Now().Add(time.Minute)})
	})
	mux.HandleFunc("POST "+enroll.PathEnroll, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		req, err := enroll.ParseRequest(b)
		if err != nil {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeBadRequest, "%v", err))
			return
		}
		src.mu.Lock()
		last := src.extra[len(src.extra)-1]
		src.mu.Unlock()
		if !bytes.Equal(last, enroll.Binding(req.VMKey, req.Nonce, req.PublicKey)) {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeBindingMismatch, "binding"))
			return
		}
		token, exp, err := iss.Issue(req.VMKey, req.PublicKey, ttl)
		if err != nil {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeUnavailable, "%v", err))
			return
		}
		issued.Add(1)
		enroll.WriteJSON(w, http.StatusOK, enroll.Response{VMKey: req.VMKey, JWT: token, ExpiresAt: exp})
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// TestAgentEnrollsAndRenews: an agent given keyguard's enrollment URL and
// no credentials earns a JWT by quoting the enrollment binding, serves its
// challenge under it, renews it before it expires, and still answers
// challenges once the first JWT has expired (the reconnect presents the
// renewed one).
func TestAgentEnrollsAndRenews(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	src := &quotingSource{}
	var issued atomic.Int32
	const ttl = 4 * time.Second
	kg := issuingKeyguard(t, set.AgentIssuer(), src, ttl, &issued)

	rid := "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/enrolled"
	vm := events.VMKey(rid)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- agent.Run(ctx, agent.Config{
			Options:    service.Options{NATS: bus.Config{URL: srv.URL()}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: sync.OnceFunc(func() { close(ready) })},
			ResourceID: rid, VMID: "vm-id", Source: src, EnrollURL: kg.URL,
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent not ready")
	}

	worker := srv.ConnectAs(busauth.AttestWorker)
	challenge := func() error {
		b, _ := json.Marshal(events.Challenge{VMKey: vm, Nonce: bytes.Repeat([]byte{1}, 32), Deadline: time.Now().Add(5 * time.Second)})
		_, err := worker.Request(events.ChallengeSubject(vm), b, 5*time.Second)
		return err
	}
	if err := challenge(); err != nil {
		t.Fatalf("challenge under the enrolled JWT: %v", err)
	}
	// Past the first JWT's expiry: renewed, reconnected, answering.
	deadline := time.Now().Add(30 * time.Second)
	for {
		if issued.Load() >= 2 && time.Since(start) > ttl+2*time.Second && challenge() == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %d JWTs issued, challenge: %v", time.Since(start), issued.Load(), challenge())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestEnrollmentAndCredentialsConflict: an agent told to enroll that also
// has credentials refuses to start.
func TestEnrollmentAndCredentialsConflict(t *testing.T) {
	err := agent.Run(context.Background(), agent.Config{
		Options:    service.Options{NATS: bus.Config{URL: "nats://127.0.0.1:1", CredsFile: "/nonexistent"}},
		ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x", Source: &quotingSource{},
		EnrollURL: "http://127.0.0.1:1",
	})
	if err == nil {
		t.Fatal("started with both")
	}
}

// TestEnrollRetriesUnknownVMPromptly: while keyguard answers unknown_vm
// (ARM has not reported the VM yet, as at a VM's boot), the agent asks
// again at least every 2 s instead of backing off exponentially: six such
// answers cost it under 12 s (exponential backoff from 0.5 s would take
// at least 15.75 s), and the seventh request enrolls.
func TestEnrollRetriesUnknownVMPromptly(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	src := &quotingSource{}
	var issued atomic.Int32
	kg := issuingKeyguard(t, set.AgentIssuer(), src, time.Hour, &issued)
	const unknown = 6
	var asked atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == enroll.PathNonce && asked.Add(1) <= unknown {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeUnknownVM, "ARM has not reported the VM yet"))
			return
		}
		kg.Config.Handler.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	en, err := agent.NewEnrollment(agent.EnrollmentConfig{URL: front.URL, VMKey: events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/at-boot"), Source: src,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := en.EnrollRetrying(ctx); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	if n := asked.Load(); n != unknown+1 || issued.Load() != 1 {
		t.Fatalf("%d nonce requests, %d JWTs issued; want %d and 1", n, issued.Load(), unknown+1)
	}
	if took >= 12*time.Second {
		t.Errorf("enrolled %s after the first request, through %d unknown_vm answers: want under 12 s", took, unknown)
	}
}
