package keyguard_test

import (
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

var barriers atomic.Int64

// barrier returns once keyguard has handled every event published before
// it (the harness consumes with concurrency 1, so in stream order).
func (h *harness) barrier() {
	h.t.Helper()
	vm := h.newVM(fmt.Sprintf("barrier-%d", barriers.Add(1)))
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	h.lifecycle(vm, events.LifecycleStopped)
	h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Suspended)
}

func ordered(c *keyguard.Config) { c.Concurrency = 1 }

func TestTransitions(t *testing.T) {
	h := newHarness(t, ordered)
	type step func(h *harness, vm *sim.VM) events.Envelope
	verdict := func(s string) step {
		return func(h *harness, vm *sim.VM) events.Envelope {
			return h.verdict(vm, s, events.Reason{Code: "policy.debug_enabled"})
		}
	}
	state := func(from, to events.Status) step {
		return func(h *harness, vm *sim.VM) events.Envelope { return h.state(vm, from, to) }
	}
	lifecycle := func(k events.LifecycleKind) step {
		return func(h *harness, vm *sim.VM) events.Envelope { return h.lifecycle(vm, k) }
	}
	failedDelete := func(h *harness, vm *sim.VM) events.Envelope {
		return h.publish(events.LifecycleSubject(vm.VMKey()), events.TypeLifecycle, events.Lifecycle{
			VMKey: vm.VMKey(), Kind: events.LifecycleDeleted, Outcome: "Failed", Origin: "test"})
	}
	cases := []struct {
		name       string
		steps      []step
		state      grants.State
		revokedFor string
		action     events.KeyAction // the last key event, "" for none
		alert      string           // an alert code expected, "" for none
	}{
		{"contraindicated verdict revokes", []step{verdict(events.VerdictContraindicated)}, grants.Revoked, grants.CauseUntrusted, events.KeyRevoked, "key.revoked"},
		{"untrusted revokes", []step{state(events.StatusTrusted, events.StatusUntrusted)}, grants.Revoked, grants.CauseUntrusted, events.KeyRevoked, "key.revoked"},
		{"stale revokes", []step{state(events.StatusUnreachable, events.StatusStale)}, grants.Revoked, grants.CauseStale, events.KeyRevoked, "key.revoked"},
		{"retired revokes", []step{state(events.StatusTrusted, events.StatusRetired)}, grants.Revoked, grants.CauseRetired, events.KeyRevoked, "key.revoked"},
		{"deleted revokes", []step{lifecycle(events.LifecycleDeleted)}, grants.Revoked, grants.CauseRetired, events.KeyRevoked, "key.revoked"},
		{"stopped suspends", []step{lifecycle(events.LifecycleStopped)}, grants.Suspended, "", events.KeySuspended, ""},
		{"deallocated suspends", []step{lifecycle(events.LifecycleDeallocated)}, grants.Suspended, "", events.KeySuspended, ""},
		{"suspended status suspends", []step{state(events.StatusTrusted, events.StatusSuspended)}, grants.Suspended, "", events.KeySuspended, ""},
		{"trusted again ends a suspension", []step{lifecycle(events.LifecycleDeallocated), state(events.StatusPending, events.StatusTrusted)}, grants.Active, "", events.KeyRestored, ""},
		{"trusted again keeps a revocation", []step{verdict(events.VerdictContraindicated), state(events.StatusUntrusted, events.StatusTrusted)}, grants.Revoked, grants.CauseUntrusted, events.KeyRevoked, "key.restore_required"},
		{"stale after untrusted keeps the graver cause", []step{state(events.StatusTrusted, events.StatusUntrusted), state(events.StatusUntrusted, events.StatusStale)}, grants.Revoked, grants.CauseUntrusted, events.KeyRevoked, ""},
		{"stopping a revoked VM keeps it revoked", []step{verdict(events.VerdictContraindicated), lifecycle(events.LifecycleStopped), state(events.StatusPending, events.StatusTrusted)}, grants.Revoked, grants.CauseUntrusted, events.KeyRevoked, ""},
		{"affirming verdict changes nothing", []step{verdict(events.VerdictAffirming)}, grants.Active, "", events.KeyGranted, ""},
		{"unreachable changes nothing", []step{state(events.StatusTrusted, events.StatusUnreachable)}, grants.Active, "", events.KeyGranted, ""},
		{"failed delete changes nothing", []step{failedDelete}, grants.Active, "", events.KeyGranted, ""},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			vm := h.newVM(fmt.Sprintf("transition-%d", i))
			h.setStatus(vm, events.StatusTrusted)
			h.grant(vm, "disk-key", keyguard.BackendLocal)
			var last events.Envelope
			for _, s := range tc.steps {
				last = s(h, vm)
			}
			h.barrier()
			g := h.getGrant(vm, keyguard.BackendLocal, "disk-key")
			if g.State != tc.state || g.RevokedFor != tc.revokedFor || !g.Applied {
				t.Fatalf("grant state %s revoked for %q applied %t, want %s %q", g.State, g.RevokedFor, g.Applied, tc.state, tc.revokedFor)
			}
			keys := h.keyEvents(vm)
			if len(keys) == 0 || keys[len(keys)-1].Action != tc.action {
				t.Fatalf("key events %+v, want the last to be %s", keys, tc.action)
			}
			k := keys[len(keys)-1]
			if tc.action != events.KeyGranted {
				type keyEvent struct {
					Backend, Actor, KeyName string
					HasCauseID, HasReason   bool
				}
				if d := fielddiff.Fields(
					keyEvent{k.Backend, k.Actor, k.KeyName, k.CauseID != "", k.Reason != ""},
					keyEvent{keyguard.BackendLocal, "keyguard", "disk-key", true, true},
				); d != "" {
					t.Fatalf("%s key event:%s", k.Action, d)
				}
			}
			if tc.action == events.KeyRevoked && len(tc.steps) == 1 && (k.CauseID != last.ID || k.LatencyMS <= 0) {
				t.Fatalf("revocation event cause %s latency %.3f ms, want cause %s", k.CauseID, k.LatencyMS, last.ID)
			}
			// Keyguard publishes its alerts after the key event: wait for
			// the one expected (a revocation's, at least).
			alerts := h.alerts(vm)
			awaited := tc.alert
			if awaited == "" && tc.state == grants.Revoked {
				awaited = "key.revoked"
			}
			if awaited != "" {
				alerts = h.waitAlerts(vm, awaited, func(as []events.Alert) bool {
					return slices.ContainsFunc(as, func(a events.Alert) bool { return a.Code == awaited })
				})
			}
			if tc.alert == "" {
				if tc.state != grants.Revoked && len(alerts) != 0 {
					t.Fatalf("unexpected alerts %+v", alerts)
				}
			} else {
				found := false
				for _, a := range alerts {
					found = found || a.Code == tc.alert
				}
				if !found {
					t.Fatalf("no %s alert in %+v", tc.alert, alerts)
				}
			}
			if tc.state == grants.Revoked {
				n := 0
				for _, a := range alerts {
					if a.Code == "key.revoked" {
						n++
						if a.Severity != events.SeverityCritical || !strings.Contains(a.Message, "disk-key") {
							t.Fatalf("revocation alert %+v", a)
						}
					}
				}
				if n != 1 {
					t.Fatalf("%d revocation alerts, want 1: %+v", n, alerts)
				}
			}
		})
	}
}

// Every grant of the VM is revoked, on every backend, by one event.
func TestRevokeEveryGrantOfTheVM(t *testing.T) {
	h := newHarness(t)
	vm := h.newVM("many")
	bystander := h.newVM("bystander")
	for _, v := range []*sim.VM{vm, bystander} {
		h.setStatus(v, events.StatusTrusted)
		h.grant(v, "disk-key", keyguard.BackendLocal)
		h.grant(v, "other-key", keyguard.BackendLocal)
	}
	h.state(vm, events.StatusTrusted, events.StatusUntrusted)
	h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Revoked)
	h.waitGrant(vm, keyguard.BackendLocal, "other-key", grants.Revoked)
	for _, key := range []string{"disk-key", "other-key"} {
		if g := h.getGrant(bystander, keyguard.BackendLocal, key); g.State != grants.Active {
			t.Fatalf("bystander's %s is %s", key, g.State)
		}
	}
	alerts := h.waitAlerts(vm, "key.revoked alert", func(as []events.Alert) bool { return len(as) > 0 })
	if len(alerts) != 1 || !strings.Contains(alerts[0].Message, "2 key grant") {
		t.Fatalf("alerts %+v, want one naming both grants", alerts)
	}
}

func TestOperatorRestore(t *testing.T) {
	h := newHarness(t)
	vm := h.newVM("restore")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	h.verdict(vm, events.VerdictContraindicated)
	h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Revoked)
	ctx := ctxT(t)

	// Not while the VM is untrusted.
	h.setStatus(vm, events.StatusUntrusted)
	_, err := keyguard.Restore(ctx, h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Reason: "fixed", Actor: "alice"})
	if refusal(err) != keyrelease.CodeNotTrusted {
		t.Fatalf("restore of an untrusted VM: %v", err)
	}
	// Reason and actor are required.
	h.setStatus(vm, events.StatusTrusted)
	if _, err := keyguard.Restore(ctx, h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Actor: "alice"}); refusal(err) != keyrelease.CodeBadRequest {
		t.Fatalf("restore without reason: %v", err)
	}
	resp, err := keyguard.Restore(ctx, h.conn, keyguard.ChangeRequest{VM: vm.ResourceID(), Reason: "debug policy fixed, INC-42", Actor: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Changed) != 1 {
		t.Fatalf("restore response %+v: want one grant changed", resp)
	}
	type restored struct {
		VMKey string
		State grants.State
	}
	if d := fielddiff.Fields(restored{resp.VMKey, resp.Changed[0].State}, restored{vm.VMKey(), grants.Active}); d != "" {
		t.Fatalf("restore response:%s", d)
	}
	type recorded struct{ Actor, Reason string }
	k := h.waitKeyEvent(vm, events.KeyRestored, keyguard.BackendLocal)
	if d := fielddiff.Fields(recorded{k.Actor, k.Reason}, recorded{"alice", "debug policy fixed, INC-42"}); d != "" {
		t.Fatalf("restore event, want actor and reason recorded:%s", d)
	}
	if _, err := h.release(vm, attester(vm), "disk-key"); err != nil {
		t.Fatalf("release after restore: %v", err)
	}
	// Nothing is left revoked: the restore resolves the VM's
	// key.restore_required (its alert key).
	var resolve events.Alert
	for _, a := range h.waitAlerts(vm, "key.restored", func(as []events.Alert) bool {
		return slices.ContainsFunc(as, func(a events.Alert) bool { return a.Code == "key.restored" })
	}) {
		if a.Code == "key.restored" {
			resolve = a
		}
	}
	if resolve.State != events.AlertResolved || resolve.Key != events.AlertKey(vm.VMKey(), "key.restore") {
		t.Fatalf("no key.restored resolving %s/key.restore: %+v", vm.VMKey(), h.alerts(vm))
	}
	// Restoring again changes nothing.
	resp, err = keyguard.Restore(ctx, h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Reason: "again", Actor: "alice"})
	if err != nil || len(resp.Changed) != 0 || len(resp.Unchanged) != 1 {
		t.Fatalf("second restore: %+v %v", resp, err)
	}

	// An operator's revocation is never restored automatically.
	resp, err = keyguard.Revoke(ctx, h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Keys: []string{"disk-key"}, Reason: "suspected compromise", Actor: "bob"})
	if err != nil || len(resp.Changed) != 1 {
		t.Fatalf("revoke: %+v %v", resp, err)
	}
	type revocation struct {
		State             grants.State
		RevokedFor, Actor string
	}
	g := h.getGrant(vm, keyguard.BackendLocal, "disk-key")
	if d := fielddiff.Fields(revocation{g.State, g.RevokedFor, g.Actor}, revocation{grants.Revoked, grants.CauseOperator, "bob"}); d != "" {
		t.Fatalf("operator revocation:%s", d)
	}
	if _, err := h.release(vm, attester(vm), "disk-key"); refusal(err) != keyrelease.CodeRevoked {
		t.Fatalf("release after operator revoke: %v", err)
	}
	if _, err := keyguard.Restore(ctx, h.conn, keyguard.ChangeRequest{VM: h.newVM("nogrants").VMKey(), Reason: "x", Actor: "a"}); refusal(err) == "" {
		t.Fatal("restore of a VM without status or grants succeeded")
	}
}

func TestAutomaticRestorePolicy(t *testing.T) {
	h := newHarness(t, ordered, func(c *keyguard.Config) {
		c.Restore = keyguard.RestorePolicy{Automatic: []string{grants.CauseStale}}
	})
	stale := h.newVM("auto-stale")
	untrusted := h.newVM("auto-untrusted")
	operator := h.newVM("auto-operator")
	for _, vm := range []*sim.VM{stale, untrusted, operator} {
		h.setStatus(vm, events.StatusTrusted)
		h.grant(vm, "disk-key", keyguard.BackendLocal)
	}
	h.state(stale, events.StatusUnreachable, events.StatusStale)
	h.state(untrusted, events.StatusTrusted, events.StatusUntrusted)
	if _, err := keyguard.Revoke(ctxT(t), h.conn, keyguard.ChangeRequest{VM: operator.VMKey(), Reason: "test", Actor: "op"}); err != nil {
		t.Fatal(err)
	}
	h.waitGrant(stale, keyguard.BackendLocal, "disk-key", grants.Revoked)
	h.waitGrant(untrusted, keyguard.BackendLocal, "disk-key", grants.Revoked)
	for _, vm := range []*sim.VM{stale, untrusted, operator} {
		h.state(vm, events.StatusPending, events.StatusTrusted)
	}
	h.barrier()
	if g := h.getGrant(stale, keyguard.BackendLocal, "disk-key"); g.State != grants.Active {
		t.Fatalf("stale revocation not restored automatically: %+v", g)
	}
	k := h.waitKeyEvent(stale, events.KeyRestored, keyguard.BackendLocal)
	if k.Actor != "keyguard" || !strings.Contains(k.Reason, "automatic restore") {
		t.Fatalf("automatic restore event %+v", k)
	}
	for _, vm := range []*sim.VM{untrusted, operator} {
		if g := h.getGrant(vm, keyguard.BackendLocal, "disk-key"); g.State != grants.Revoked {
			t.Fatalf("%s restored automatically against policy: %+v", vm.VMKey(), g)
		}
	}
	if _, err := h.release(stale, attester(stale), "disk-key"); err != nil {
		t.Fatal(err)
	}
}
