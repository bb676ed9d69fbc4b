package main

import (
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// TestJudge: an untrusted VM counts as alerted only by its vm.untrusted
// alert (not by the configuration alerts every VM gets, nor by the
// scenario's configuration drift, which fires and resolves on a healthy
// VM that stays trusted); a VM revoked while trusted or warning fails the
// run at once.
func TestJudge(t *testing.T) {
	const bad, drifted, ok = "aaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbb", "cccccccccccccccccccccccccc"
	at := time.Now()
	fleet := func() *fleetState {
		st := &fleetState{status: map[string]events.VMStatus{}, grants: map[string][]grant{}, alerted: map[string]bool{}}
		for vm, s := range map[string]events.Status{bad: events.StatusUntrusted, drifted: events.StatusTrusted, ok: events.StatusTrusted} {
			st.status[vm] = events.VMStatus{VMKey: vm, Status: s, LastVerdictAt: at}
			st.grants[vm] = []grant{{VMKey: vm, State: "granted"}}
		}
		st.grants[bad] = []grant{{VMKey: bad, State: "revoked", RevokedFor: "untrusted"}}
		return st
	}
	alert := func(st *fleetState, a events.Alert) {
		st.alerted[a.VMKey] = untrustedAlert(a, st.alerted[a.VMKey])
	}
	config := func(vm, code string, state events.AlertState) events.Alert {
		return events.Alert{Severity: events.SeverityWarning, Code: code, VMKey: vm, Key: events.AlertKey(vm, "config.boot_diagnostics.screenshots"), State: state}
	}

	st := fleet()
	for _, vm := range []string{bad, drifted, ok} {
		alert(st, events.Alert{Severity: events.SeverityInfo, Code: "config.disk_encryption.platform_managed_key", VMKey: vm,
			Key: events.AlertKey(vm, "config.disk_encryption.platform_managed_key"), State: events.AlertFiring})
	}
	alert(st, config(drifted, "config.boot_diagnostics.screenshots", events.AlertFiring))
	alert(st, config(drifted, "config.fixed", events.AlertResolved))
	if done, summary, err := st.judge(3, 1); err != nil || done || !strings.Contains(summary, "alerted false") {
		t.Fatalf("untrusted VM with configuration alerts only: done %v, %q, %v", done, summary, err)
	}
	alert(st, events.Alert{Severity: events.SeverityCritical, Code: "key.revoked", VMKey: bad})
	if done, _, err := st.judge(3, 1); err != nil || done {
		t.Fatalf("untrusted VM with key.revoked only: done %v, %v", done, err)
	}
	alert(st, events.Alert{Severity: events.SeverityCritical, Code: "vm.untrusted", VMKey: bad, Key: events.AlertKey(bad, "attestation"), State: events.AlertFiring})
	if done, summary, err := st.judge(3, 1); err != nil || !done {
		t.Fatalf("untrusted, revoked and alerted: done %v, %q, %v", done, summary, err)
	}

	for _, s := range []events.Status{events.StatusTrusted, events.StatusWarning} {
		st := fleet()
		st.status[drifted] = events.VMStatus{VMKey: drifted, Status: s, LastVerdictAt: at}
		st.grants[drifted] = []grant{{VMKey: drifted, State: "revoked", RevokedFor: "untrusted"}}
		if _, _, err := st.judge(3, 1); err == nil || !strings.Contains(err.Error(), drifted) {
			t.Errorf("a %s VM with its key revoked: %v, want an error naming it", s, err)
		}
	}
}
