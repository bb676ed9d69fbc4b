package appraise

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
)

func TestResult(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opt := Options{Now: now, Build: "test", JobID: "j1", Attempt: 2, ResourceID: "/r"}
	pol := DefaultPolicy()

	v, err := Result(genuineSNP(), nil, pol, evidence.Expect{VMID: "abc", VMKey: "k"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != events.VerdictAffirming || v.TrustVector.Hardware != 2 || v.TrustVector.InstanceIdentity != 2 ||
		v.TrustVector.Executables != 0 || v.PolicyID != pol.ID || v.VerifierBuild != "test" || !v.IssuedAt.Equal(now) ||
		v.JobID != "j1" || v.Attempt != 2 || v.VMKey != "k" || v.ID == "" || v.TCB == nil {
		t.Fatalf("affirming verdict %+v", v)
	}

	r := genuineSNP()
	r.SNP.Debug = true
	v, _ = Result(r, nil, pol, evidence.Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictContraindicated || v.TrustVector.RuntimeOpaque != 96 || v.Reasons[0].Code != ReasonPolicyDebug {
		t.Fatalf("debug verdict %+v", v)
	}

	r = genuineSNP()
	r.NonceChecked = false
	v, _ = Result(r, nil, pol, evidence.Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictWarning || v.TrustVector.InstanceIdentity != 32 {
		t.Fatalf("warning verdict %+v", v)
	}

	pol2 := DefaultPolicy()
	pol2.SNP.Measurements = []Hex{make([]byte, 48)}
	v, _ = Result(genuineSNP(), nil, pol2, evidence.Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictAffirming || v.TrustVector.Executables != 3 {
		t.Fatalf("reference values verdict %+v", v)
	}

	r = genuineSNP()
	r.Genuine = false
	r.Failures = []events.Reason{{Code: evidence.ReasonSNPSignatureInvalid}}
	v, _ = Result(r, nil, pol, evidence.Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictContraindicated || v.TrustVector.Hardware != 99 || v.Reasons[0].Code != evidence.ReasonSNPSignatureInvalid {
		t.Fatalf("forged verdict %+v", v)
	}

	r = genuineSNP()
	r.Genuine, r.Unavailable = false, true
	r.Failures = []events.Reason{{Code: evidence.ReasonSNPVCEKUnavailable}}
	v, _ = Result(r, nil, pol, evidence.Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictNone || v.TrustVector.Hardware != 0 {
		t.Fatalf("undecided verdict %+v", v)
	}

	v, _ = Result(nil, errors.New("field nonce: missing"), pol, evidence.Expect{VMID: "abc", VMKey: "k"}, opt)
	if v.Status != events.VerdictContraindicated || v.Reasons[0].Code != evidence.ReasonBundleMalformed || !strings.Contains(v.Reasons[0].Message, "nonce") {
		t.Fatalf("malformed verdict %+v", v)
	}
}

// TestVerdictVMIDOnlyFromTrustedSource: a forged bundle chooses its
// runtime data, so its vmUniqueId is a claim. A verdict's vm_id is what the
// caller knew from ARM (or nothing), the claim travels in claimed_vm_id,
// and neither the claim nor the bundle's unsigned vm_key fills a field
// others decide on.
func TestVerdictVMIDOnlyFromTrustedSource(t *testing.T) {
	pol := DefaultPolicy()
	forged := func() *evidence.Result {
		r := genuineSNP()
		r.Genuine = false
		r.VMUniqueID = "ATTACKER-CHOSEN"
		r.BundleVMKey = "attackerchosenvmkeyaaaaaaa"
		r.Failures = []events.Reason{{Code: evidence.ReasonSNPSignatureInvalid}}
		return r
	}
	for _, tc := range []struct {
		name          string
		res           *evidence.Result
		exp           evidence.Expect
		vmID, claimed string
		vmKey         string
	}{
		{"forged, vmId unknown", forged(), evidence.Expect{VMKey: "k"}, "", "ATTACKER-CHOSEN", "k"},
		{"forged, vmId known", forged(), evidence.Expect{VMID: "abc", VMKey: "k"}, "abc", "ATTACKER-CHOSEN", "k"},
		{"forged, nothing known", forged(), evidence.Expect{}, "", "ATTACKER-CHOSEN", ""},
		{"genuine, vmId known", genuineSNP(), evidence.Expect{VMID: "abc", VMKey: "k"}, "abc", "ABC", "k"},
		{"genuine, vmId unknown", genuineSNP(), evidence.Expect{VMKey: "k"}, "", "ABC", "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Result(tc.res, nil, pol, tc.exp, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if v.VMID != tc.vmID || v.ClaimedVMID != tc.claimed || v.VMKey != tc.vmKey {
				t.Fatalf("vm_id %q claimed_vm_id %q vm_key %q, want %q %q %q", v.VMID, v.ClaimedVMID, v.VMKey, tc.vmID, tc.claimed, tc.vmKey)
			}
		})
	}
}
