package appraise_test

import (
	"context"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

func TestVMKeyMismatch(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	b, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := a.Respond(nonce)
	if err != nil {
		t.Fatal(err)
	}
	// B's evidence request answered by A: both identity checks fire.
	verdict, _, err := appraise.Evidence(context.Background(), v, raw, evidence.Expect{Nonce: nonce, VMID: b.VMID(), VMKey: b.VMKey()}, auth.Policy(), appraise.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if verdict.Status != events.VerdictContraindicated || verdict.Reasons[0].Code != appraise.ReasonIdentityVMIDMismatch || verdict.Reasons[1].Code != appraise.ReasonIdentityVMKeyMismatch {
		t.Fatalf("verdict %s %v", verdict.Status, verdict.Reasons)
	}
}
