package keyguard_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

func TestReleaseToTrustedVM(t *testing.T) {
	h := newHarness(t)
	vm := h.newVM("trusted")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)

	for _, suite := range []keyrelease.Suite{keyrelease.DefaultSuite, keyrelease.ClassicSuite} {
		c := &keyrelease.Client{Requester: h.conn, VMKey: vm.VMKey(), Attester: attester(vm), Suite: suite}
		got, err := c.Release(ctxT(t), "disk-key")
		if err != nil {
			t.Fatalf("%s: %v", suite, err)
		}
		type released struct {
			Secret, KeyName string
			HasVersion      bool
		}
		if d := fielddiff.Fields(released{string(got.Secret), got.KeyName, got.Version != 0}, released{testSecret, "disk-key", true}); d != "" {
			t.Fatalf("%s: released:%s", suite, d)
		}
	}
	// A warning status still releases.
	h.setStatus(vm, events.StatusWarning)
	if _, err := h.release(vm, attester(vm), "disk-key"); err != nil {
		t.Fatal(err)
	}
	k := h.waitKeyEvent(vm, events.KeyReleased, keyguard.BackendLocal)
	type releaseEvent struct {
		KeyName, VMID string
		HasCauseID    bool
	}
	if d := fielddiff.Fields(releaseEvent{k.KeyName, k.VMID, k.CauseID != ""}, releaseEvent{"disk-key", vm.VMID(), true}); d != "" {
		t.Fatalf("release event:%s", d)
	}
	n := 0
	for _, k := range h.keyEvents(vm) {
		if k.Action == events.KeyReleased {
			n++
		}
	}
	if n != 3 {
		t.Fatalf("%d release events, want 3", n)
	}
}

func TestReleaseRefused(t *testing.T) {
	h := newHarness(t)
	other := h.newVM("refused-other")
	h.setStatus(other, events.StatusTrusted)

	cases := []struct {
		name  string
		setup func(h *harness, vm *sim.VM) keyrelease.Attester
		key   string
		want  string
	}{
		{"untrusted", func(h *harness, vm *sim.VM) keyrelease.Attester {
			h.setStatus(vm, events.StatusUntrusted)
			return attester(vm)
		}, "disk-key", keyrelease.CodeNotTrusted},
		{"stale", func(h *harness, vm *sim.VM) keyrelease.Attester {
			h.setStatus(vm, events.StatusStale)
			return attester(vm)
		}, "disk-key", keyrelease.CodeNotTrusted},
		{"pending", func(h *harness, vm *sim.VM) keyrelease.Attester {
			h.setStatus(vm, events.StatusPending)
			return attester(vm)
		}, "disk-key", keyrelease.CodeNotTrusted},
		{"revoked", func(h *harness, vm *sim.VM) keyrelease.Attester {
			h.verdict(vm, events.VerdictContraindicated, events.Reason{Code: "policy.debug_enabled"})
			h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Revoked)
			return attester(vm)
		}, "disk-key", keyrelease.CodeRevoked},
		{"suspended", func(h *harness, vm *sim.VM) keyrelease.Attester {
			h.lifecycle(vm, events.LifecycleStopped)
			h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Suspended)
			return attester(vm)
		}, "disk-key", keyrelease.CodeSuspended},
		{"no grant", func(h *harness, vm *sim.VM) keyrelease.Attester { return attester(vm) }, "other-key", keyrelease.CodeNoGrant},
		{"evidence from another VM", func(*harness, *sim.VM) keyrelease.Attester {
			return attester(other) // genuine, trusted, bound to the nonce: but not this VM
		}, "disk-key", keyrelease.CodeWrongVM},
		{"quote does not bind the ephemeral key", func(h *harness, vm *sim.VM) keyrelease.Attester {
			return keyrelease.AttesterFunc(func(ctx context.Context, nonce, _ []byte) ([]byte, error) {
				return attester(vm).Attest(ctx, nonce, nonce) // quotes the bare nonce
			})
		}, "disk-key", keyrelease.CodeBindingMismatch},
		{"quote binds another key", func(h *harness, vm *sim.VM) keyrelease.Attester {
			return keyrelease.AttesterFunc(func(ctx context.Context, nonce, _ []byte) ([]byte, error) {
				_, pub, _ := keyrelease.DefaultSuite.GenerateKey()
				return attester(vm).Attest(ctx, nonce, keyrelease.Binding(nonce, keyrelease.DefaultSuite, pub))
			})
		}, "disk-key", keyrelease.CodeBindingMismatch},
		{"debug policy", func(h *harness, vm *sim.VM) keyrelease.Attester {
			vm.SetFaults(sim.Faults{DebugPolicy: true})
			return attester(vm)
		}, "disk-key", keyrelease.CodeEvidenceRejected},
		{"broken signature", func(h *harness, vm *sim.VM) keyrelease.Attester {
			vm.SetFaults(sim.Faults{BrokenQuote: true})
			return attester(vm)
		}, "disk-key", keyrelease.CodeEvidenceRejected},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			vm := h.newVM("refused-" + string(rune('a'+i)))
			h.setStatus(vm, events.StatusTrusted)
			h.grant(vm, "disk-key", keyguard.BackendLocal)
			a := tc.setup(h, vm)
			_, err := h.release(vm, a, tc.key)
			if got := refusal(err); got != tc.want {
				t.Fatalf("refusal %q (%v), want %q", got, err, tc.want)
			}
			for _, k := range h.keyEvents(vm) {
				if k.Action == events.KeyReleased {
					t.Fatal("a refused release was recorded as released")
				}
			}
		})
	}
}

// A nonce is good for one release attempt, on every replica: two replicas
// race with the same request and exactly one answers with the secret; the
// request sent again later is refused.
func TestReplayedNonceRefusedAcrossReplicas(t *testing.T) {
	h := newHarness(t)
	h.start() // a second replica in the same queue group
	vm := h.newVM("replay")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	ctx := ctxT(t)

	var nr keyrelease.NonceResponse
	if err := h.conn.Request(ctx, keyrelease.NonceSubject(vm.VMKey()), keyrelease.NonceRequest{VMKey: vm.VMKey()}, &nr); err != nil {
		t.Fatal(err)
	}
	type nonceFields struct {
		Expired bool
		Size    int
	}
	if d := fielddiff.Fields(nonceFields{time.Until(nr.ExpiresAt) <= 0, len(nr.Nonce)}, nonceFields{false, keyrelease.NonceSize}); d != "" {
		t.Fatalf("nonce response:%s", d)
	}
	priv, pub, err := keyrelease.DefaultSuite.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attester(vm).Attest(ctx, nr.Nonce, keyrelease.Binding(nr.Nonce, keyrelease.DefaultSuite, pub))
	if err != nil {
		t.Fatal(err)
	}
	req := keyrelease.ReleaseRequest{VMKey: vm.VMKey(), KeyName: "disk-key", Nonce: nr.Nonce, Suite: keyrelease.DefaultSuite, PublicKey: pub, Evidence: bundle}
	body, _ := json.Marshal(req)

	// The same request, sent at once over several connections: the queue
	// group spreads the copies over both replicas.
	const racers = 8
	var wg sync.WaitGroup
	results := make([]error, racers)
	answers := make([]keyrelease.ReleaseResponse, racers)
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.connect()
			results[i] = c.Request(ctx, keyrelease.ReleaseSubject(vm.VMKey()), body, &answers[i])
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range results {
		switch {
		case err == nil:
			ok++
			secret, err := keyrelease.DefaultSuite.Open(priv, keyrelease.Info(vm.VMKey(), "disk-key", nr.Nonce), answers[i].Sealed)
			if err != nil || string(secret) != testSecret {
				t.Fatalf("answer does not open: %v", err)
			}
		case refusal(err) != keyrelease.CodeBadNonce:
			t.Fatalf("racer %d: %v, want %s", i, err, keyrelease.CodeBadNonce)
		}
	}
	if ok != 1 {
		t.Fatalf("%d of %d racing requests with one nonce got the secret, want exactly 1", ok, racers)
	}
	if err := h.conn.Request(ctx, keyrelease.ReleaseSubject(vm.VMKey()), body, nil); refusal(err) != keyrelease.CodeBadNonce {
		t.Fatalf("replay: %v", err)
	}

	// A nonce issued for one VM is refused for another.
	other := h.newVM("replay-other")
	h.setStatus(other, events.StatusTrusted)
	h.grant(other, "disk-key", keyguard.BackendLocal)
	if err := h.conn.Request(ctx, keyrelease.NonceSubject(vm.VMKey()), keyrelease.NonceRequest{VMKey: vm.VMKey()}, &nr); err != nil {
		t.Fatal(err)
	}
	bundle, _ = attester(other).Attest(ctx, nr.Nonce, keyrelease.Binding(nr.Nonce, keyrelease.DefaultSuite, pub))
	req = keyrelease.ReleaseRequest{VMKey: other.VMKey(), KeyName: "disk-key", Nonce: nr.Nonce, Suite: keyrelease.DefaultSuite, PublicKey: pub, Evidence: bundle}
	if err := h.conn.Request(ctx, keyrelease.ReleaseSubject(other.VMKey()), req, nil); refusal(err) != keyrelease.CodeBadNonce {
		t.Fatalf("nonce of another VM: %v", err)
	}
	// A made-up nonce is refused, and a malformed request says what is wrong.
	req.Nonce = make([]byte, 32)
	if err := h.conn.Request(ctx, keyrelease.ReleaseSubject(other.VMKey()), req, nil); refusal(err) != keyrelease.CodeBadNonce {
		t.Fatalf("unknown nonce: %v", err)
	}
	req.PublicKey = nil
	err = h.conn.Request(ctx, keyrelease.ReleaseSubject(other.VMKey()), req, nil)
	if refusal(err) != keyrelease.CodeBadRequest || !strings.Contains(err.Error(), "public_key") {
		t.Fatalf("malformed request: %v", err)
	}
}

// Identity is not left to policy: even a policy that does not check the
// vmId cannot make keyguard release a VM's key to another VM.
func TestWrongVMRefusedWhatEverThePolicy(t *testing.T) {
	pol := authority(t).Policy()
	pol.Identity.CheckVMID = false
	h := newHarness(t, func(c *keyguard.Config) { c.Evidence.Policy = pol })
	vm, other := h.newVM("identity"), h.newVM("identity-other")
	for _, v := range []*sim.VM{vm, other} {
		h.setStatus(v, events.StatusTrusted)
		h.grant(v, "disk-key", keyguard.BackendLocal)
	}
	// The other VM's bundle, with and without its vm_key: the vmUniqueId
	// gives it away either way.
	for _, a := range []keyrelease.Attester{attester(other), withoutVMKey(attester(other))} {
		if _, err := h.release(vm, a, "disk-key"); refusal(err) != keyrelease.CodeWrongVM {
			t.Fatalf("evidence of another VM: %v", err)
		}
	}
	if _, err := h.release(vm, attester(vm), "disk-key"); err != nil {
		t.Fatalf("own evidence: %v", err)
	}
}

func TestExpiredNonceRefused(t *testing.T) {
	h := newHarness(t, func(c *keyguard.Config) { c.NonceTTL = 50 * time.Millisecond })
	vm := h.newVM("expired")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	slow := keyrelease.AttesterFunc(func(ctx context.Context, nonce, extra []byte) ([]byte, error) {
		time.Sleep(150 * time.Millisecond)
		return attester(vm).Attest(ctx, nonce, extra)
	})
	if _, err := h.release(vm, slow, "disk-key"); refusal(err) != keyrelease.CodeBadNonce {
		t.Fatalf("expired nonce: %v", err)
	}
}
