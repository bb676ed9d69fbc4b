package keyguard_test

import (
	"context"
	"encoding/json"
	"testing"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv/azurekvtest"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// setInventory writes the VM's inventory record as ingest does from ARM
// (vmID "" deletes it: ARM has not been read).
func (h *harness) setInventory(vm *sim.VM, vmID string) {
	h.t.Helper()
	ctx := ctxT(h.t)
	kv, err := h.js.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		h.t.Fatal(err)
	}
	if vmID == "" {
		if err := kv.Delete(ctx, vm.VMKey()); err != nil {
			h.t.Fatal(err)
		}
		return
	}
	b, _ := json.Marshal(events.VM{VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vmID, PowerState: "running"})
	if _, err := kv.Put(ctx, vm.VMKey(), b); err != nil {
		h.t.Fatal(err)
	}
}

// forgedVerdict publishes the contraindicated verdict a VM's forged bundle
// earns: its runtime data claims the vmId claimed, which nothing verified.
func (h *harness) forgedVerdict(vm *sim.VM, claimed string) {
	h.publish(events.VerdictSubject(vm.VMKey()), events.TypeVerdict, events.Verdict{
		ID: events.NewID(), VMKey: vm.VMKey(), VMID: claimed, ClaimedVMID: claimed, Platform: vm.Platform(),
		Status: events.VerdictContraindicated, Reasons: []events.Reason{{Code: "snp.signature_invalid"}},
	})
}

// withoutVMKey answers with a's evidence, its unsigned vm_key field
// removed, as an attacker relaying it would.
func withoutVMKey(a keyrelease.Attester) keyrelease.Attester {
	return keyrelease.AttesterFunc(func(ctx context.Context, nonce, extra []byte) ([]byte, error) {
		b, err := a.Attest(ctx, nonce, extra)
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, err
		}
		delete(m, "vm_key")
		return json.Marshal(m)
	})
}

// A compromised VM whose vmId keyguard does not know answers with a forged
// bundle claiming the vmId of another CVM the attacker runs. The verdict
// revokes its grant; the claimed vmId must not stick to the grant, or after
// an operator restore the attacker's CVM, with its own genuine evidence,
// would obtain the victim's secret.
func TestForgedVMIDDoesNotRedirectReleaseAfterRestore(t *testing.T) {
	h := newHarness(t)
	victim, attackerCVM := h.newVM("forged-vmid-victim"), h.newVM("forged-vmid-attacker")
	h.setStatus(victim, events.StatusTrusted)
	h.setInventory(victim, "") // ARM not read yet: the vmId is unknown
	h.grant(victim, "disk-key", keyguard.BackendLocal)

	h.forgedVerdict(victim, attackerCVM.VMID())
	if g := h.waitGrant(victim, keyguard.BackendLocal, "disk-key", grants.Revoked); g.VMID != "" {
		t.Fatalf("grant took the vmId %q claimed by unverified evidence", g.VMID)
	}
	if _, err := keyguard.Restore(ctxT(t), h.conn, keyguard.ChangeRequest{VM: victim.VMKey(), Reason: "investigated", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	h.waitGrant(victim, keyguard.BackendLocal, "disk-key", grants.Active)

	if got, err := h.release(victim, withoutVMKey(attester(attackerCVM)), "disk-key"); refusal(err) != keyrelease.CodeWrongVM {
		t.Fatalf("attacker's CVM asking for the victim's key: released %v, err %v; want %s", got != nil, err, keyrelease.CodeWrongVM)
	}
	// Once ARM has told keyguard the victim's vmId, the victim gets its key.
	h.setInventory(victim, victim.VMID())
	if _, err := h.release(victim, attester(victim), "disk-key"); err != nil {
		t.Fatalf("victim's own release: %v", err)
	}
	// An operator-pinned vmId that contradicts ARM releases nothing.
	h.setInventory(victim, attackerCVM.VMID())
	if _, err := h.release(victim, attester(victim), "disk-key"); refusal(err) != keyrelease.CodeWrongVM {
		t.Fatalf("release while ARM reports another vmId: %v", err)
	}
}

// The same forged verdict against a Key Vault grant: with no trusted vmId
// the revocation disables the key version; it must not edit the release
// policy to exclude the claimed vmId (the VM's real one keeping access).
func TestForgedVMIDDoesNotNarrowKeyVaultRevocation(t *testing.T) {
	vm, err := authority(t).NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	const madeUp = "00000000-dead-4bad-8bad-000000000000"
	vault := azurekvtest.NewVault()
	vault.AddKey("disk", "v1", true, true, cvmPolicyFor(vm.VMID(), madeUp), false)
	h := newHarness(t, func(c *keyguard.Config) {
		c.AzureKeyVaults = []azurekv.Config{{
			Name: "akv", VaultURL: azurekvtest.VaultURL, Credential: &azfake.TokenCredential{}, ClientOptions: vault.ClientOptions(),
			Keys: []azurekv.KeyMapping{{VM: vm.ResourceID(), Key: "disk"}},
		}}
	})
	h.setStatus(vm, events.StatusTrusted)
	h.setInventory(vm, "")

	h.forgedVerdict(vm, madeUp)
	g := h.waitGrant(vm, "akv", "disk", grants.Revoked)
	st, err := azurekv.DecodeState(g.BackendData)
	if err != nil || len(st.Versions) != 1 || st.Versions[0].Action != azurekv.ActionDisable || st.VMID != "" {
		t.Fatalf("backend data %s (%v): want the version disabled, no vmId", g.BackendData, err)
	}
	if vault.Enabled("disk", "v1") {
		t.Fatal("key version still enabled")
	}
	if p := vault.Policy(t, "disk", "v1"); p.Excludes(azurekv.DefaultVMIDClaim, madeUp) || p.Excludes(azurekv.DefaultVMIDClaim, vm.VMID()) {
		t.Fatal("release policy edited with a vmId nobody verified")
	}
}

// A revocation stored while a release is being verified and sealed wins:
// keyguard checks status and grant again after sealing, the last thing
// before the release is recorded and answered.
func TestRevocationDuringSealingWins(t *testing.T) {
	var h *harness
	revoke := make(chan string, 1)
	h = prepareHarness(t, natstest.Start(t))
	h.hooks.Sealed = func(vm string) {
		select {
		case r := <-revoke:
			if _, err := keyguard.Revoke(ctxT(t), h.conn, keyguard.ChangeRequest{VM: vm, Reason: r, Actor: "alice"}); err != nil {
				t.Errorf("revoke: %v", err)
			}
		default:
		}
	}
	h.start()
	vm := h.newVM("revoked-while-sealing")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	revoke <- "compromise reported during the release"
	if got, err := h.release(vm, attester(vm), "disk-key"); refusal(err) != keyrelease.CodeRevoked {
		t.Fatalf("release across a revocation: released %v, err %v; want %s", got != nil, err, keyrelease.CodeRevoked)
	}
	for _, k := range h.keyEvents(vm) {
		if k.Action == events.KeyReleased {
			t.Fatalf("release recorded: %+v", k)
		}
	}
	// Restored, the next release goes through (the hook no longer revokes).
	if _, err := keyguard.Restore(ctxT(t), h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Reason: "cleared", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.release(vm, attester(vm), "disk-key"); err != nil {
		t.Fatalf("release after restore: %v", err)
	}
}
