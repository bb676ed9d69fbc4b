package attestworker

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
)

func TestTrustedPathAndReattestation(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	_ = srv
	f := newFleet(t, ctx, conn, 2, sim.VMConfig{})
	tdx := newFleet(t, ctx, conn, 1, sim.VMConfig{Platform: evidence.PlatformAzureTDX})
	vms := append(f.vms, tdx.vms...)
	runWorker(t, testConfig(connectBus(t, srv.URL()), "w1"))
	f.register(ctx, vms...)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, vms...)

	type statusFields struct {
		VMID, ResourceID, Platform  string
		HasLastGoodAt, HasLastJobID bool
	}
	type verdictFields struct {
		Status, Platform, VMID, PolicyID string
		HasJobID, HasEvidenceDigest      bool
	}
	type stateFields struct {
		From, To  events.Status
		VerdictID string
	}
	for _, v := range vms {
		st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
		if d := fielddiff.Fields(
			statusFields{st.VMID, st.ResourceID, st.Platform, !st.LastGoodAt.IsZero(), st.LastJobID != ""},
			statusFields{v.VMID(), v.ResourceID(), v.Platform(), true, true},
		); d != "" {
			t.Errorf("%s: status record:%s", v.VMKey(), d)
		}
		// The next due time is 2s ±10% after this one's due time, which was
		// a moment before the attestation.
		if due := st.NextDueAt.Sub(st.LastGoodAt); due < 1300*time.Millisecond || due > 2200*time.Millisecond {
			t.Errorf("next due %s after the attestation, want the 2s interval ±10%%", due)
		}
		vs := verdictsOf(t, ctx, conn.JS, v.VMKey())
		if len(vs) == 0 {
			t.Fatalf("%s: no verdict", v.VMKey())
		}
		vd := vs[0]
		if d := fielddiff.Fields(
			verdictFields{vd.Status, vd.Platform, vd.VMID, vd.PolicyID, vd.JobID != "", vd.EvidenceDigest != ""},
			verdictFields{events.VerdictAffirming, v.Platform(), v.VMID(), "vigil-sim", true, true},
		); d != "" {
			t.Errorf("%s: verdict:%s", v.VMKey(), d)
		}
		if n, err := base64.StdEncoding.DecodeString(vd.Nonce); err != nil || len(n) != NonceSize {
			t.Errorf("verdict nonce %q: want %d fresh bytes", vd.Nonce, NonceSize)
		}
		states := statesOf(t, ctx, conn.JS, v.VMKey())
		if len(states) != 1 {
			t.Errorf("%s: %d state changes %+v, want one pending -> trusted naming the verdict", v.VMKey(), len(states), states)
		} else if d := fielddiff.Fields(
			stateFields{states[0].From, states[0].To, states[0].VerdictID},
			stateFields{events.StatusPending, events.StatusTrusted, vd.ID},
		); d != "" {
			t.Errorf("%s: state change:%s", v.VMKey(), d)
		}
	}
	// Re-attested on schedule, with a fresh nonce each time, and the state
	// is not published again while nothing changes.
	waitFor(t, 15*time.Second, "three attestations of every VM", func() (bool, string) {
		for _, v := range vms {
			if n := len(verdictsOf(t, ctx, conn.JS, v.VMKey())); n < 3 {
				return false, v.VMKey() + " has fewer than 3 verdicts"
			}
		}
		return true, ""
	})
	for _, v := range vms {
		vs := verdictsOf(t, ctx, conn.JS, v.VMKey())
		var nonces []string
		for _, vd := range vs {
			if slices.Contains(nonces, vd.Nonce) {
				t.Fatalf("nonce %s used twice", vd.Nonce)
			}
			nonces = append(nonces, vd.Nonce)
		}
		if n := len(statesOf(t, ctx, conn.JS, v.VMKey())); n != 1 {
			t.Errorf("%d state changes, want 1", n)
		}
	}
}

func TestEachFailureReasonMakesUntrusted(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	tests := []struct {
		name   string
		faults sim.Faults
		reason string
	}{
		{"debug", sim.Faults{DebugPolicy: true}, appraise.ReasonPolicyDebug},
		{"low tcb", sim.Faults{LowTCB: true}, appraise.ReasonPolicyTCB},
		{"tampered measurement", sim.Faults{WrongMeasurement: true}, appraise.ReasonPolicyMeasurement},
		{"unexpected boot chain", sim.Faults{UnexpectedBoot: true}, appraise.ReasonPolicyPCR},
		{"wrong vmUniqueId", sim.Faults{WrongVMID: true}, appraise.ReasonIdentityVMIDMismatch},
		{"replayed evidence", sim.Faults{StaleNonce: true}, evidence.ReasonTPMNonceMismatch},
		{"broken binding", sim.Faults{BrokenBinding: true}, evidence.ReasonBindingMismatch},
		{"broken hardware signature", sim.Faults{BrokenSignature: true}, evidence.ReasonSNPSignatureInvalid},
		{"broken quote signature", sim.Faults{BrokenQuote: true}, evidence.ReasonTPMSignatureInvalid},
		{"malformed bundle", sim.Faults{}, evidence.ReasonBundleMalformed},
	}
	f := newFleet(t, ctx, conn, len(tests), sim.VMConfig{})
	runWorker(t, testConfig(connectBus(t, srv.URL()), "w1"))
	f.register(ctx, f.vms...)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, f.vms...)

	// The VMs go bad after having been trusted (a replay needs a previous
	// challenge to replay).
	for i, tc := range tests {
		v := f.vms[i]
		if tc.reason == evidence.ReasonBundleMalformed {
			v.mu.Lock()
			v.garbage = true
			v.mu.Unlock()
			continue
		}
		v.SetFaults(tc.faults)
	}
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusUntrusted, f.vms...)
	// The alert follows the status write: wait for one per VM.
	var untrusted []events.Alert
	waitFor(t, 20*time.Second, "a vm.untrusted alert for every VM", func() (bool, string) {
		untrusted = alertsWith(t, ctx, conn.JS, "vm.untrusted")
		seen := map[string]bool{}
		for _, a := range untrusted {
			seen[a.VMKey] = true
		}
		return len(seen) == len(f.vms), fmt.Sprintf("%d of %d VMs alerted", len(seen), len(f.vms))
	})
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := f.vms[i]
			st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
			if !slices.ContainsFunc(st.Reasons, func(r events.Reason) bool { return r.Code == tc.reason }) {
				t.Fatalf("reasons %v, want %s", st.Reasons, tc.reason)
			}
			vs := verdictsOf(t, ctx, conn.JS, v.VMKey())
			last := vs[len(vs)-1]
			if last.Status != events.VerdictContraindicated {
				t.Fatalf("last verdict %s", last.Status)
			}
			n := 0
			for _, a := range untrusted {
				if a.VMKey == v.VMKey() && a.Severity == events.SeverityCritical {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("%d critical vm.untrusted alerts, want 1", n)
			}
		})
	}
}

func TestInventoryVMIDMismatchIsUntrusted(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 1, sim.VMConfig{})
	v := f.vms[0]
	// ingest knows another vmId for this resource ID (a VM recreated under
	// the same name, or evidence from elsewhere).
	kv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		t.Fatal(err)
	}
	runWorker(t, testConfig(connectBus(t, srv.URL()), "w1"))
	f.register(ctx, v)
	rec := events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: "00000000-1111-2222-3333-444444444444", PowerState: "running"}
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(ctx, v.VMKey(), b); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.PublishJob(ctx, "test", events.Job{VMKey: v.VMKey(), Reason: "operator"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "vmid mismatch", func() (bool, string) {
		st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
		ok := st.Status == events.StatusUntrusted && slices.ContainsFunc(st.Reasons, func(r events.Reason) bool { return r.Code == appraise.ReasonIdentityVMIDMismatch })
		return ok, string(st.Status)
	})
}
