package agent_test

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/agent"
)

// releaser is a release service that verifies the evidence for real: the
// bundle's nonce must be its nonce and the quote must bind the ephemeral
// key (keyrelease.Binding) for the VM's vmId.
type releaser struct {
	v      *evidence.Verifier
	pol    *appraise.Policy
	vmID   atomic.Value // string
	secret []byte
	refuse atomic.Value // string: a refusal code, or ""
	nonces chan []byte
}

func reasonCodes(v events.Verdict) string {
	s := ""
	for _, r := range v.Reasons {
		s += r.Code + " "
	}
	return s
}

func (r *releaser) serve(t *testing.T, ctx context.Context, c *bus.Conn) {
	t.Helper()
	r.nonces = make(chan []byte, 16)
	if _, err := c.Serve(ctx, events.SubjectKeyguardNonceAll, "", func(context.Context, []byte) ([]byte, error) {
		n := evidence.NewNonce()
		r.nonces <- n
		return json.Marshal(keyrelease.NonceResponse{Nonce: n, ExpiresAt: time.Now().Add(time.Minute)})
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Serve(ctx, events.SubjectKeyguardReleaseAll, "", func(ctx context.Context, data []byte) ([]byte, error) {
		if code, _ := r.refuse.Load().(string); code != "" {
			return nil, &bus.ReplyError{Code: code, Message: "refused by the test"}
		}
		req, err := keyrelease.ParseReleaseRequest(data)
		if err != nil {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBadRequest, Message: err.Error()}
		}
		issued := <-r.nonces
		if string(issued) != string(req.Nonce) {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBadNonce}
		}
		exp := evidence.Expect{Nonce: req.Nonce, ExtraData: keyrelease.Binding(req.Nonce, req.Suite, req.PublicKey), VMID: r.vmID.Load().(string), VMKey: req.VMKey}
		verdict, _, _ := appraise.Evidence(ctx, r.v, req.Evidence, exp, r.pol, appraise.Options{})
		if verdict.Status != events.VerdictAffirming {
			return nil, &bus.ReplyError{Code: keyrelease.CodeEvidenceRejected, Message: reasonCodes(verdict)}
		}
		sealed, err := req.Suite.Seal(req.PublicKey, keyrelease.Info(req.VMKey, req.KeyName, req.Nonce), r.secret)
		if err != nil {
			return nil, err
		}
		return json.Marshal(keyrelease.ReleaseResponse{VMKey: req.VMKey, KeyName: req.KeyName, Version: 7, Suite: req.Suite, Sealed: sealed, ReleasedAt: time.Now()})
	}); err != nil {
		t.Fatal(err)
	}
}

func TestReleaseFetchesTheSecretWithBoundEvidence(t *testing.T) {
	auth := authority()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx := ctxT(t, 30*time.Second)
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	r := &releaser{v: v, pol: auth.Policy(), secret: []byte("disk encryption key")}
	r.vmID.Store(vm.VMID())
	r.serve(t, ctx, c)
	cfg := agent.ReleaseConfig{Conn: c, ResourceID: vm.ResourceID(), Source: vmSource{vm}}

	rel, err := agent.Release(ctx, cfg, "disk-key")
	if err != nil {
		t.Fatal(err)
	}
	if string(rel.Secret) != "disk encryption key" || rel.Version != 7 || rel.KeyName != "disk-key" {
		t.Fatalf("released %+v", rel)
	}

	// Evidence for another VM's identity is rejected, and the refusal code
	// reaches the caller.
	r.vmID.Store("00000000-0000-0000-0000-000000000000")
	if _, err := agent.Release(ctx, cfg, "disk-key"); keyrelease.RefusalCode(err) != keyrelease.CodeEvidenceRejected {
		t.Fatalf("wrong vmId: %v", err)
	}
	r.vmID.Store(vm.VMID())
	r.refuse.Store(keyrelease.CodeNotTrusted)
	if _, err := agent.Release(ctx, cfg, "disk-key"); keyrelease.RefusalCode(err) != keyrelease.CodeNotTrusted {
		t.Fatalf("untrusted VM: %v", err)
	}
}
