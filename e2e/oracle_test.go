package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/agent"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// vtpm is the simulated vTPM of one CVM as the agent's evidence source.
type vtpm struct{ vm *sim.VM }

func (s vtpm) Evidence(_ context.Context, nonce, extra []byte) ([]byte, error) {
	b, err := s.vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: extra})
	if err != nil {
		return nil, err
	}
	return b.Marshal()
}

// TestChallengeOracleCannotObtainReleaseBinding performs the exchange of
// issue 13's challenge oracle against a genuine agent and keyguard: anyone
// who may publish on a VM's challenge subject asks keyguard for a release
// nonce for that VM, makes an HPKE key pair, sends the VM's agent a
// challenge whose nonce is the release binding of keyguard's nonce and that
// key, puts keyguard's nonce into the bundle's unsigned nonce field and
// asks for the VM's secret. Keyguard must refuse (the agent's quote covers
// the challenge's labelled digest, not the binding), and the VM's own
// release must still work.
func TestChallengeOracleCannotObtainReleaseBinding(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	connect := func(name string) *bus.Conn {
		c, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: name, Logger: quiet})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	admin := connect("admin")
	if err := events.Provision(ctx, admin.JS, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	// The VM as ingest (inventory, from ARM) and attest-worker (status) know it.
	put := func(bucket string, v any) {
		kv, err := admin.JS.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(v)
		if _, err := kv.Put(ctx, vm.VMKey(), b); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now().UTC()
	put(events.BucketVMs, events.VM{VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vm.VMID(), PowerState: "running"})
	put(events.BucketStatus, events.VMStatus{VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vm.VMID(), Status: events.StatusTrusted, Since: now, UpdatedAt: now})

	const secret = "the VM's disk key, for the VM only"
	kctx, kcancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- keyguard.Run(kctx, keyguard.Config{
			Options:           service.Options{Conn: connect("keyguard"), Logger: quiet, Ready: func() { close(ready) }},
			MasterKey:         []byte("0123456789abcdef0123456789abcdef"),
			ImportSecrets:     map[string][]byte{"disk-key": []byte(secret)},
			Grants:            []keyguard.GrantSpec{{VM: vm.ResourceID(), Key: "disk-key"}},
			Evidence:          keyguard.EvidenceConfig{Verifier: evidence.Config{TestRoots: auth.TrustRoots(), Offline: true}, Policy: auth.Policy()},
			ReconcileInterval: time.Hour,
		})
	}()
	t.Cleanup(func() {
		kcancel()
		if err := <-done; err != nil {
			t.Errorf("keyguard: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("keyguard: %v", err)
	}

	// The genuine agent of the VM, on its own connection.
	ag := agent.New(vm.VMKey(), vtpm{vm}, 10*time.Second, 0, 0, quiet, nil)
	if _, err := ag.Serve(ctx, connect("agent")); err != nil {
		t.Fatal(err)
	}

	// The attacker relays keyguard's binding to the agent as a challenge
	// nonce and dresses the answer up as release evidence.
	attacker := connect("attacker")
	relay := keyrelease.AttesterFunc(func(ctx context.Context, nonce, binding []byte) ([]byte, error) {
		var raw json.RawMessage
		if err := attacker.Request(ctx, events.ChallengeSubject(vm.VMKey()), events.Challenge{VMKey: vm.VMKey(), Nonce: binding}, &raw); err != nil {
			return nil, err
		}
		var m map[string]any
		if err := json.Unmarshal(raw, &m); err != nil {
			return nil, err
		}
		m["nonce"] = base64.StdEncoding.EncodeToString(nonce) // unsigned: the attacker's to edit
		return json.Marshal(m)
	})
	steal := &keyrelease.Client{Requester: attacker, VMKey: vm.VMKey(), Attester: relay, Timeout: 30 * time.Second}
	got, err := steal.Release(ctx, "disk-key")
	if got != nil {
		t.Fatalf("the attacker obtained the VM's secret %q through its agent", got.Secret)
	}
	var re *bus.ReplyError
	if !errors.As(err, &re) || re.Code != keyrelease.CodeBindingMismatch {
		t.Fatalf("relayed challenge answer: %v, want refusal %s", err, keyrelease.CodeBindingMismatch)
	}

	// The VM itself, through the agent's release path, gets its secret.
	own, err := agent.Release(ctx, agent.ReleaseConfig{Conn: connect("agent-release"), ResourceID: vm.ResourceID(), Source: vtpm{vm}, Logger: quiet}, "disk-key")
	if err != nil {
		t.Fatalf("the VM's own release: %v", err)
	}
	if string(own.Secret) != secret {
		t.Fatalf("released %q", own.Secret)
	}
}
