package keyguard_test

import (
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// The actor of an operator request is the subject's last token: a payload
// naming another actor is refused, and the key event and grant record the
// subject's actor.
func TestOperatorActorIsTheSubjects(t *testing.T) {
	h := newHarness(t)
	vm := h.newVM("actor")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	ctx := ctxT(t)

	req := keyguard.ChangeRequest{VM: vm.VMKey(), Reason: "suspected leak", Actor: "bob"}
	var resp keyguard.ChangeResponse
	if err := h.conn.Request(ctx, keyguard.AdminSubject(keyguard.ActionRevoke, "alice"), req, &resp); refusal(err) != keyrelease.CodeBadRequest {
		t.Fatalf("revoke on alice's subject naming bob: %v, want %s", err, keyrelease.CodeBadRequest)
	}
	// The unpinned subject is no longer served.
	if err := h.conn.Request(ctx, keyguard.SubjectAdminRevoke, req, &resp); err == nil {
		t.Fatal("revoke on the unpinned subject answered")
	}
	if g := h.getGrant(vm, keyguard.BackendLocal, "disk-key"); g.State != grants.Active {
		t.Fatalf("grant %s after refused revokes, want active", g.State)
	}
	// Without an actor in the payload, the subject's is recorded.
	req.Actor = ""
	if err := h.conn.Request(ctx, keyguard.AdminSubject(keyguard.ActionRevoke, "alice"), req, &resp); err != nil {
		t.Fatal(err)
	}
	if k := h.waitKeyEvent(vm, events.KeyRevoked, keyguard.BackendLocal); k.Actor != "alice" {
		t.Fatalf("key event actor %q, want alice", k.Actor)
	}
	if g := h.getGrant(vm, keyguard.BackendLocal, "disk-key"); g.Actor != "alice" {
		t.Fatalf("grant actor %q, want alice", g.Actor)
	}
}

// On the pinned vigil.keyguard.{nonce,release}.<vm> a request for another
// VM is refused with wrong_vm.
func TestPinnedReleaseForAnotherVMRefused(t *testing.T) {
	h := newHarness(t)
	vm, other := h.newVM("pinned"), h.newVM("other")
	h.setStatus(vm, events.StatusTrusted)
	h.setStatus(other, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	h.grant(other, "disk-key", keyguard.BackendLocal)
	ctx := ctxT(t)

	var nr keyrelease.NonceResponse
	err := h.conn.Request(ctx, events.KeyguardNonceSubject(vm.VMKey()), keyrelease.NonceRequest{VMKey: other.VMKey()}, &nr)
	if refusal(err) != keyrelease.CodeWrongVM {
		t.Fatalf("nonce for another VM on a VM's pinned subject: %v, want %s", err, keyrelease.CodeWrongVM)
	}
	// A nonce for other, asked on its own subject, then a release of it on
	// vm's subject.
	if err := h.conn.Request(ctx, events.KeyguardNonceSubject(other.VMKey()), keyrelease.NonceRequest{VMKey: other.VMKey()}, &nr); err != nil {
		t.Fatal(err)
	}
	suite := keyrelease.DefaultSuite
	_, pub, err := suite.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attester(other).Attest(ctx, nr.Nonce, keyrelease.Binding(nr.Nonce, suite, pub))
	if err != nil {
		t.Fatal(err)
	}
	req := keyrelease.ReleaseRequest{VMKey: other.VMKey(), KeyName: "disk-key", Nonce: nr.Nonce, Suite: suite, PublicKey: pub, Evidence: bundle}
	err = h.conn.Request(ctx, events.KeyguardReleaseSubject(vm.VMKey()), req, nil)
	if refusal(err) != keyrelease.CodeWrongVM {
		t.Fatalf("release for another VM on a VM's pinned subject: %v, want %s", err, keyrelease.CodeWrongVM)
	}
	// The pinned subjects serve the VM's own release.
	c := &keyrelease.Client{Requester: h.conn, VMKey: vm.VMKey(), Attester: attester(vm)}
	if _, err := c.Release(ctx, "disk-key"); err != nil {
		t.Fatal(err)
	}
}
