package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/agent"
)

// fakeIMDS speaks the Azure instance metadata service's REST shapes for
// the paths the agent uses.
type fakeIMDS struct {
	compute   agent.Compute
	vcekPEM   string
	chainPEM  string
	tdQuote   []byte // answered for any TD report
	tdReports atomic.Int32
	lastTD    atomic.Pointer[[]byte]
	fail      atomic.Bool
}

func (f *fakeIMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Metadata") != "true" {
		http.Error(w, `{"error":"Bad request. Required metadata header not specified"}`, http.StatusBadRequest)
		return
	}
	if f.fail.Load() {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/metadata/instance/compute":
		if r.URL.Query().Get("api-version") == "" {
			http.Error(w, `{"error":"Bad request. api-version was not specified in the request"}`, http.StatusBadRequest)
			return
		}
		_ = json.NewEncoder(w).Encode(f.compute)
	case r.Method == http.MethodGet && r.URL.Path == "/metadata/THIM/amd/certification":
		_ = json.NewEncoder(w).Encode(map[string]string{"vcekCert": f.vcekPEM, "tcbm": "DB18000000000004", "certificateChain": f.chainPEM, "cacheControl": "86400"})
	case r.Method == http.MethodPost && r.URL.Path == "/acc/tdquote":
		var req struct {
			Report string `json:"report"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		td, err := base64.RawURLEncoding.DecodeString(req.Report)
		if err != nil || len(td) != 1024 {
			http.Error(w, "report must be a base64url TD report", http.StatusBadRequest)
			return
		}
		f.tdReports.Add(1)
		f.lastTD.Store(&td)
		_ = json.NewEncoder(w).Encode(map[string]string{"quote": base64.RawURLEncoding.EncodeToString(f.tdQuote)})
	default:
		http.NotFound(w, r)
	}
}

func TestIMDSClient(t *testing.T) {
	f := &fakeIMDS{
		compute:  agent.Compute{ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/cvm", VMID: "26F8BC30-774E-4290-8E7A-535F3B672AEE", Name: "cvm"},
		vcekPEM:  "-----BEGIN CERTIFICATE-----\nVkNFSw==\n-----END CERTIFICATE-----\n",
		chainPEM: "-----BEGIN CERTIFICATE-----\nQVNL\n-----END CERTIFICATE-----\n",
		tdQuote:  []byte("a TD quote"),
	}
	srv := httptest.NewServer(f)
	defer srv.Close()
	c := agent.NewIMDS(srv.URL)
	ctx := ctxT(t, 10*time.Second)

	comp, err := c.Compute(ctx)
	if err != nil || comp.ResourceID != f.compute.ResourceID || comp.VMID != f.compute.VMID {
		t.Fatalf("compute %+v %v", comp, err)
	}
	cert, err := c.AMDCertification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if pem := string(cert.PEM()); !strings.Contains(pem, "VkNFSw==") || !strings.Contains(pem, "QVNL") || strings.Index(pem, "VkNFSw==") > strings.Index(pem, "QVNL") {
		t.Fatalf("PEM is not the VCEK followed by its chain: %q", pem)
	}
	q, err := c.TDQuote(ctx, bytes.Repeat([]byte{7}, 1024))
	if err != nil || string(q) != "a TD quote" {
		t.Fatalf("TD quote %q %v", q, err)
	}
	if _, err := c.TDQuote(ctx, []byte("short")); !errors.Is(err, agent.ErrIMDS) || !strings.Contains(err.Error(), "400") {
		t.Fatalf("bad TD report: %v", err)
	}
	f.fail.Store(true)
	if _, err := c.Compute(ctx); !errors.Is(err, agent.ErrIMDS) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("outage: %v", err)
	}
	f.fail.Store(false)

	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"resourceId":"` + strings.Repeat("x", 300<<10) + `"}`))
	}))
	defer huge.Close()
	if _, err := agent.NewIMDS(huge.URL).Compute(ctx); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("oversized answer: %v", err)
	}
}

// vmSource adapts a simulated VM to agent.Source.
type vmSource struct{ vm *sim.VM }

func (s vmSource) Evidence(_ context.Context, nonce, extra []byte) ([]byte, error) {
	b, err := s.vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: extra})
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}

func TestRunLearnsIdentityFromIMDSAndServesOnlyItsSubject(t *testing.T) {
	auth := authority()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeIMDS{compute: agent.Compute{ResourceID: vm.ResourceID(), VMID: vm.VMID()}}
	imds := httptest.NewServer(f)
	defer imds.Close()
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t, 30*time.Second))
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- agent.Run(ctx, agent.Config{Options: service.Options{NATS: bus.Config{URL: srv.URL()}, HTTPAddr: "127.0.0.1:0", Ready: sync.OnceFunc(func() { close(ready) })}, IMDS: agent.NewIMDS(imds.URL), Source: vmSource{vm}})
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	}
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	verdict, err := challenge(ctx, c, v, auth.Policy(), events.VMKey(vm.ResourceID()), vm.VMID(), 5*time.Second)
	if err != nil || verdict.Status != events.VerdictAffirming {
		t.Fatalf("challenge: %v %s %v", err, verdict.Status, verdict.Reasons)
	}
	// The agent subscribes to its own challenge subject and nothing else.
	cz, err := srv.Embedded().Connz(&server.ConnzOptions{Subscriptions: true})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ci := range cz.Conns {
		if ci.Name != "vigil-agent "+events.VMKey(vm.ResourceID()) {
			continue
		}
		found = true
		if len(ci.Subs) != 1 || ci.Subs[0] != events.ChallengeSubject(events.VMKey(vm.ResourceID())) {
			t.Fatalf("agent subscriptions %v, want only its challenge subject", ci.Subs)
		}
	}
	if !found {
		t.Fatal("agent connection not found")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
