package keyguard_test

import (
	"fmt"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv/azurekvtest"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

func cvmPolicyFor(vmids ...string) []byte {
	conds := ""
	for i, id := range vmids {
		if i > 0 {
			conds += ","
		}
		conds += fmt.Sprintf(`{"claim":"x-ms-azurevm-vmid","equals":%q}`, id)
	}
	return []byte(`{"version":"1.0.0","anyOf":[{"authority":"https://sharedweu.weu.attest.azure.net","allOf":[` +
		`{"claim":"x-ms-isolation-tee.x-ms-compliance-status","equals":"azure-compliant-cvm"},{"anyOf":[` + conds + `]}]}]}`)
}

// Revocation and restore reach Azure Key Vault: the VM's vmId is written
// out of the mutable release policy of the mapped key (and back in), and an
// immutable key is disabled (and enabled again).
func TestAzureKeyVaultRevokeAndRestore(t *testing.T) {
	a, b := sim.VMConfig{AK: sim.AKECDSAP256}, sim.VMConfig{AK: sim.AKECDSAP256}
	vmA, err := authority(t).NewVM(a)
	if err != nil {
		t.Fatal(err)
	}
	vmB, err := authority(t).NewVM(b)
	if err != nil {
		t.Fatal(err)
	}
	vault := azurekvtest.NewVault()
	pol := cvmPolicyFor(vmA.VMID(), vmB.VMID())
	vault.AddKey("disk", "v1", true, true, pol, false)
	vault.AddKey("sealed", "v1", true, true, pol, true)
	h := newHarness(t, func(c *keyguard.Config) {
		c.AzureKeyVaults = []azurekv.Config{{
			Name: "akv", VaultURL: azurekvtest.VaultURL, Credential: &azfake.TokenCredential{}, ClientOptions: vault.ClientOptions(),
			Keys: []azurekv.KeyMapping{
				{VM: vmA.ResourceID(), VMID: vmA.VMID(), Key: "disk"},
				{VM: vmA.VMKey(), Key: "sealed", Version: "v1"},
				{VM: vmB.ResourceID(), Key: "disk"}, // vmId from the inventory (ARM)
			},
		}}
	})
	h.setStatus(vmA, events.StatusTrusted)
	h.setStatus(vmB, events.StatusTrusted)
	type grantState struct {
		State   grants.State
		Applied bool
	}
	for _, g := range []struct {
		vm  *sim.VM
		key string
	}{{vmA, "disk"}, {vmA, "sealed"}, {vmB, "disk"}} {
		e := h.getGrant(g.vm, "akv", g.key)
		if d := fielddiff.Fields(grantState{e.State, e.Applied}, grantState{grants.Active, true}); d != "" {
			t.Fatalf("configured grant %s/%s (apply error %q):%s", g.vm.VMKey(), g.key, e.ApplyError, d)
		}
	}
	vault.TakeCalls()

	h.verdict(vmA, events.VerdictContraindicated, events.Reason{Code: "snp.signature_invalid"})
	disk := h.waitGrant(vmA, "akv", "disk", grants.Revoked)
	sealed := h.waitGrant(vmA, "akv", "sealed", grants.Revoked)
	st, err := azurekv.DecodeState(disk.BackendData)
	if err != nil || len(st.Versions) != 1 || st.Versions[0].Action != azurekv.ActionPolicy {
		t.Fatalf("disk backend data %s, %v", disk.BackendData, err)
	}
	if st, _ := azurekv.DecodeState(sealed.BackendData); len(st.Versions) != 1 || st.Versions[0].Action != azurekv.ActionDisable {
		t.Fatalf("sealed backend data %s", sealed.BackendData)
	}
	p := vault.Policy(t, "disk", "v1")
	if !p.Excludes(azurekv.DefaultVMIDClaim, vmA.VMID()) || p.Excludes(azurekv.DefaultVMIDClaim, vmB.VMID()) {
		t.Fatal("vault policy after revocation: A must be excluded and B not")
	}
	if vault.Enabled("sealed", "v1") {
		t.Fatal("immutable key still enabled")
	}
	patchPaths := map[string]int{}
	for _, c := range azurekvtest.Patches(vault.TakeCalls()) {
		patchPaths[c.Path]++
	}
	if patchPaths["/keys/disk/v1"] != 1 || patchPaths["/keys/sealed/v1"] != 1 || len(patchPaths) != 2 {
		t.Fatalf("PATCH calls %v", patchPaths)
	}
	// The key event follows the applied grant: wait for it.
	for _, key := range []string{"disk", "sealed"} {
		deadline := time.Now().Add(20 * time.Second)
		for !slices.ContainsFunc(h.keyEvents(vmA), func(k events.Key) bool {
			return k.Action == events.KeyRevoked && k.Backend == "akv" && k.KeyName == key
		}) {
			if time.Now().After(deadline) {
				t.Fatalf("no revoked key event for akv/%s", key)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Stale on B: vmId from the inventory record.
	h.state(vmB, events.StatusUnreachable, events.StatusStale)
	h.waitGrant(vmB, "akv", "disk", grants.Revoked)
	if !vault.Policy(t, "disk", "v1").Excludes(azurekv.DefaultVMIDClaim, vmB.VMID()) {
		t.Fatal("B not excluded")
	}
	vault.TakeCalls()

	if _, err := keyguard.Restore(ctxT(t), h.conn, keyguard.ChangeRequest{VM: vmA.VMKey(), Reason: "re-imaged", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	h.waitGrant(vmA, "akv", "disk", grants.Active)
	h.waitGrant(vmA, "akv", "sealed", grants.Active)
	if !vault.Enabled("sealed", "v1") {
		t.Fatal("sealed not enabled again")
	}
	p = vault.Policy(t, "disk", "v1")
	if p.Excludes(azurekv.DefaultVMIDClaim, vmA.VMID()) || !p.Excludes(azurekv.DefaultVMIDClaim, vmB.VMID()) {
		t.Fatal("restoring A must leave B excluded")
	}
	calls := vault.TakeCalls()
	if n := len(azurekvtest.Patches(calls)); n != 2 {
		t.Fatalf("restore made %d PATCH calls, want 2: %v", n, calls)
	}
	for _, c := range calls {
		if c.Method != http.MethodGet && c.Method != http.MethodPatch {
			t.Fatalf("unexpected call %s", c)
		}
	}
	k := h.waitKeyEvent(vmA, events.KeyRestored, "akv")
	type recorded struct{ Actor, Reason string }
	if d := fielddiff.Fields(recorded{k.Actor, k.Reason}, recorded{"alice", "re-imaged"}); d != "" {
		t.Fatalf("restore event:%s", d)
	}
}

// A failing vault leaves the revocation pending, records the error, and
// reconciliation completes it once the vault answers again.
func TestAzureFailureRetriedByReconciliation(t *testing.T) {
	vm, err := authority(t).NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	vault := azurekvtest.NewVault()
	vault.AddKey("disk", "v1", true, true, cvmPolicyFor(vm.VMID()), false)
	vault.FailNext["PATCH disk/v1"] = 1
	h := newHarness(t, func(c *keyguard.Config) {
		c.ReconcileInterval = 200 * time.Millisecond
		c.AzureKeyVaults = []azurekv.Config{{
			Name: "akv", VaultURL: azurekvtest.VaultURL, Credential: &azfake.TokenCredential{}, ClientOptions: vault.ClientOptions(),
			Keys: []azurekv.KeyMapping{{VM: vm.ResourceID(), VMID: vm.VMID(), Key: "disk"}},
		}}
	})
	h.setStatus(vm, events.StatusTrusted)
	h.lifecycle(vm, events.LifecycleDeleted)
	g := h.waitGrant(vm, "akv", "disk", grants.Revoked)
	if !vault.Policy(t, "disk", "v1").Excludes(azurekv.DefaultVMIDClaim, vm.VMID()) {
		t.Fatal("not revoked in the vault")
	}
	type revocation struct{ RevokedFor, ApplyError string }
	if d := fielddiff.Fields(revocation{g.RevokedFor, g.ApplyError}, revocation{grants.CauseRetired, ""}); d != "" {
		t.Fatalf("grant after reconciliation:%s", d)
	}
	if n := len(azurekvtest.Patches(vault.TakeCalls())); n < 2 {
		t.Fatalf("%d PATCH calls: the injected failure was not retried", n)
	}
	// The failure fired an alert, the revocation's application resolves it
	// (the same key).
	// (The resolve follows the key event: wait for it.)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var fired, resolved events.Alert
		for _, a := range h.alerts(vm) {
			switch {
			case a.Code == "key.revocation_not_applied" && a.Severity == events.SeverityCritical && a.State == events.AlertFiring:
				fired = a
			case a.Code == "key.applied" && a.State == events.AlertResolved:
				resolved = a
			}
		}
		if fired.Key != "" && resolved.Key == fired.Key {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want a firing key.revocation_not_applied and its resolve with one key: %+v", h.alerts(vm))
		}
	}
}

// Reconciliation revokes a grant whose VM's status says untrusted even when
// the event that said so never reached keyguard.
func TestReconcileActsOnMissedStatus(t *testing.T) {
	h := newHarness(t, func(c *keyguard.Config) { c.ReconcileInterval = 100 * time.Millisecond })
	vm := h.newVM("missed")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	h.setStatus(vm, events.StatusUntrusted) // no event published
	g := h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Revoked)
	if g.RevokedFor != grants.CauseUntrusted {
		t.Fatalf("grant %+v", g.Grant)
	}
	h.waitKeyEvent(vm, events.KeyRevoked, keyguard.BackendLocal)
}

// A restore that arrives while the revocation's call to Key Vault is still
// under way ends with the key enabled: the slow call for the old state
// cannot land after the call for the new one and leave the vault disabled
// while the grant says active.
func TestAzureKeyVaultRestoreDuringSlowRevocation(t *testing.T) {
	vm, err := authority(t).NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	vault := azurekvtest.NewVault()
	vault.AddKey("sealed", "v1", true, true, cvmPolicyFor(vm.VMID()), true)
	h := newHarness(t, func(c *keyguard.Config) {
		c.AzureKeyVaults = []azurekv.Config{{
			Name: "akv", VaultURL: azurekvtest.VaultURL, Credential: &azfake.TokenCredential{}, ClientOptions: vault.ClientOptions(),
			Keys: []azurekv.KeyMapping{{VM: vm.VMKey(), Key: "sealed", Version: "v1"}},
		}}
	})
	h.setStatus(vm, events.StatusTrusted)
	h.waitGrant(vm, "akv", "sealed", grants.Active)

	// Hold the revocation's update back until the restore has been asked for.
	held, release := make(chan struct{}), make(chan struct{})
	var first atomic.Bool
	vault.SetGate(func(id string) {
		if id == "PATCH sealed/v1" && first.CompareAndSwap(false, true) {
			close(held)
			<-release
		}
	})
	h.verdict(vm, events.VerdictContraindicated, events.Reason{Code: "snp.signature_invalid"})
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("the revocation never reached Key Vault")
	}
	if _, err := keyguard.Restore(ctxT(t), h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Reason: "false alarm", Actor: "alice"}); err != nil {
		t.Fatal(err)
	}
	// Whatever could overtake the held call gets the time to do so.
	time.Sleep(300 * time.Millisecond)
	close(release)

	h.waitGrant(vm, "akv", "sealed", grants.Active)
	deadline := time.Now().Add(10 * time.Second)
	for !vault.Enabled("sealed", "v1") {
		if time.Now().After(deadline) {
			g := h.getGrant(vm, "akv", "sealed")
			t.Fatalf("grant is %s, applied %t, but the key is disabled in the vault", g.State, g.Applied)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g := h.getGrant(vm, "akv", "sealed"); g.State != grants.Active || !g.Applied {
		t.Fatalf("grant after the race: %s, applied %t", g.State, g.Applied)
	}
}
