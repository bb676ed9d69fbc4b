package e2e

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/agent"
	attestworker "github.com/vigil-cc/vigil/services/attest-worker"
	"github.com/vigil-cc/vigil/services/auditor"
	"github.com/vigil-cc/vigil/services/ingest"
	ingestarm "github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// asyncErrors records every asynchronous NATS error a connection logs
// (permission violations among them).
type asyncErrors struct {
	mu   sync.Mutex
	msgs []string
}

func (a *asyncErrors) Enabled(context.Context, slog.Level) bool { return true }
func (a *asyncErrors) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "NATS async error" {
		return nil
	}
	var b strings.Builder
	r.Attrs(func(at slog.Attr) bool { b.WriteString(at.String() + " "); return true })
	a.mu.Lock()
	a.msgs = append(a.msgs, b.String())
	a.mu.Unlock()
	return nil
}
func (a *asyncErrors) WithAttrs([]slog.Attr) slog.Handler { return a }
func (a *asyncErrors) WithGroup(string) slog.Handler      { return a }

func (a *asyncErrors) all() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.msgs...)
}

type staticToken struct{}

func (staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "e2e", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

// TestServicesUnderTheirOwnIdentity runs a server in operator mode with a
// fresh identity, provisions as the administrator, and runs ingest,
// attest-worker, keyguard and the auditor in process, each with its own
// credentials (its inbox prefix given by the service skeleton, the
// topology checked with its own permissions), and simulated agents with
// theirs: every service gets ready with no asynchronous error (no
// permission violation) on any connection. Then one agent's user is
// revoked: its connection is closed and a reconnect refused.
func TestServicesUnderTheirOwnIdentity(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	srv.JetStream() // the administrator provisions
	errs := &asyncErrors{}
	log := slog.New(errs)
	creds := func(p busauth.Principal) bus.Config {
		c, err := set.Creds(p)
		if err != nil {
			t.Fatal(err)
		}
		return bus.Config{URL: srv.URL(), UserJWT: c.JWT, NKeySeed: c.Seed}
	}
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	vms, err := auth.NewFleet(2, sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	verifier := evidence.Config{Offline: true, TestRoots: auth.TrustRoots()}
	dir := t.TempDir()
	services := []struct {
		name string
		run  func(ctx context.Context, o service.Options) error
	}{
		{"keyguard", func(ctx context.Context, o service.Options) error {
			return keyguard.Run(ctx, keyguard.Config{Options: o, MasterKey: []byte("0123456789abcdef0123456789abcdef"),
				Evidence: keyguard.EvidenceConfig{Verifier: verifier, Policy: auth.Policy()}, ReconcileInterval: time.Hour})
		}},
		{"attest-worker", func(ctx context.Context, o service.Options) error {
			return attestworker.Run(ctx, attestworker.Config{Options: o, Name: "e2e", Policy: auth.Policy(), Verifier: verifier})
		}},
		{"auditor", func(ctx context.Context, o service.Options) error {
			return auditor.Run(ctx, auditor.Config{Options: o, LogDir: filepath.Join(dir, "audit", "log"), GenerateKeys: true,
				SignerKeyFile: filepath.Join(dir, "audit", "signer.key"), VerifierKeyFile: filepath.Join(dir, "audit", "signer.pub")})
		}},
		{"ingest", func(ctx context.Context, o service.Options) error {
			return ingest.Run(ctx, ingest.Config{Options: o, WebhookAddr: "127.0.0.1:0", WebhookSecrets: []string{"e2e-webhook-secret-0123456789"},
				ARM: ingestarm.Config{Credential: staticToken{}, Endpoint: "http://127.0.0.1:1"}, ReconcileInterval: -1})
		}},
	}
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { scancel(); wg.Wait() })
	for _, s := range services {
		ready := make(chan struct{})
		done := make(chan error, 1)
		o := service.Options{NATS: creds(busauth.Principal(s.name)), Logger: log, Ready: sync.OnceFunc(func() { close(ready) })}
		wg.Add(1)
		go func() { defer wg.Done(); done <- s.run(sctx, o) }()
		select {
		case <-ready:
		case err := <-done:
			t.Fatalf("%s under its own credentials: %v", s.name, err)
		case <-ctx.Done():
			t.Fatalf("%s not ready under its own credentials", s.name)
		}
	}

	// The agents, each on its own connection with its own credentials.
	type agentConn struct {
		creds busauth.Credentials
		conn  *bus.Conn
	}
	agents := map[string]agentConn{}
	for _, vm := range vms {
		c, err := set.AgentCreds(vm.VMKey(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), UserJWT: c.JWT, NKeySeed: c.Seed,
			InboxPrefix: busauth.AgentInboxPrefix(vm.VMKey()), Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		ag := agent.New(vm.VMKey(), vtpm{vm}, 10*time.Second, 0, 0, log, nil)
		if _, err := ag.Serve(ctx, conn); err != nil {
			t.Fatal(err)
		}
		agents[vm.VMKey()] = agentConn{c, conn}
	}
	if e := errs.all(); len(e) > 0 {
		t.Fatalf("asynchronous NATS errors (permission violations):\n%s", strings.Join(e, "\n"))
	}

	// Revoke one agent's user: its connection closes within seconds and
	// its credentials no longer connect.
	victim := agents[vms[1].VMKey()]
	if err := set.Revoke(victim.creds.PublicKey()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	srv.UpdateAccount()
	deadline := start.Add(10 * time.Second)
	for victim.conn.NC.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatal("the revoked agent is still connected after 10 s")
		}
		time.Sleep(time.Millisecond)
	}
	t.Logf("revocation -> disconnect: %s", time.Since(start))
	rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
	defer rcancel()
	if again, err := bus.Connect(rctx, bus.Config{URL: srv.URL(), UserJWT: victim.creds.JWT, NKeySeed: victim.creds.Seed,
		InboxPrefix: busauth.AgentInboxPrefix(vms[1].VMKey())}); err == nil {
		_ = again.Close()
		t.Fatal("the revoked agent's credentials connect again")
	}
	if !agents[vms[0].VMKey()].conn.NC.IsConnected() {
		t.Fatal("the other agent lost its connection")
	}
}
