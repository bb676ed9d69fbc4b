package evidence

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

func TestAppraise(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	opt := AppraiseOptions{Now: now, Build: "test", JobID: "j1", Attempt: 2, ResourceID: "/r"}
	pol := DefaultPolicy()

	v, err := Appraise(genuineSNP(), nil, pol, Expect{VMID: "abc", VMKey: "k"}, opt)
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
	v, _ = Appraise(r, nil, pol, Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictContraindicated || v.TrustVector.RuntimeOpaque != 96 || v.Reasons[0].Code != ReasonPolicyDebug {
		t.Fatalf("debug verdict %+v", v)
	}

	r = genuineSNP()
	r.NonceChecked = false
	v, _ = Appraise(r, nil, pol, Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictWarning || v.TrustVector.InstanceIdentity != 32 {
		t.Fatalf("warning verdict %+v", v)
	}

	pol2 := DefaultPolicy()
	pol2.SNP.Measurements = []Hex{make([]byte, 48)}
	v, _ = Appraise(genuineSNP(), nil, pol2, Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictAffirming || v.TrustVector.Executables != 3 {
		t.Fatalf("reference values verdict %+v", v)
	}

	r = genuineSNP()
	r.Genuine = false
	r.Failures = []events.Reason{{Code: ReasonSNPSignatureInvalid}}
	v, _ = Appraise(r, nil, pol, Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictContraindicated || v.TrustVector.Hardware != 99 || v.Reasons[0].Code != ReasonSNPSignatureInvalid {
		t.Fatalf("forged verdict %+v", v)
	}

	r = genuineSNP()
	r.Genuine, r.Unavailable = false, true
	r.Failures = []events.Reason{{Code: ReasonSNPVCEKUnavailable}}
	v, _ = Appraise(r, nil, pol, Expect{VMID: "abc"}, opt)
	if v.Status != events.VerdictNone || v.TrustVector.Hardware != 0 {
		t.Fatalf("undecided verdict %+v", v)
	}

	v, _ = Appraise(nil, errors.New("field nonce: missing"), pol, Expect{VMID: "abc", VMKey: "k"}, opt)
	if v.Status != events.VerdictContraindicated || v.Reasons[0].Code != ReasonBundleMalformed || !strings.Contains(v.Reasons[0].Message, "nonce") {
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
	forged := func() *Result {
		r := genuineSNP()
		r.Genuine = false
		r.VMUniqueID = "ATTACKER-CHOSEN"
		r.BundleVMKey = "attackerchosenvmkeyaaaaaaa"
		r.Failures = []events.Reason{{Code: ReasonSNPSignatureInvalid}}
		return r
	}
	for _, tc := range []struct {
		name          string
		res           *Result
		exp           Expect
		vmID, claimed string
		vmKey         string
	}{
		{"forged, vmId unknown", forged(), Expect{VMKey: "k"}, "", "ATTACKER-CHOSEN", "k"},
		{"forged, vmId known", forged(), Expect{VMID: "abc", VMKey: "k"}, "abc", "ATTACKER-CHOSEN", "k"},
		{"forged, nothing known", forged(), Expect{}, "", "ATTACKER-CHOSEN", ""},
		{"genuine, vmId known", genuineSNP(), Expect{VMID: "abc", VMKey: "k"}, "abc", "ABC", "k"},
		{"genuine, vmId unknown", genuineSNP(), Expect{VMKey: "k"}, "", "ABC", "k"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := Appraise(tc.res, nil, pol, tc.exp, AppraiseOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if v.VMID != tc.vmID || v.ClaimedVMID != tc.claimed || v.VMKey != tc.vmKey {
				t.Fatalf("vm_id %q claimed_vm_id %q vm_key %q, want %q %q %q", v.VMID, v.ClaimedVMID, v.VMKey, tc.vmID, tc.claimed, tc.vmKey)
			}
		})
	}
}

func TestVerdictJWS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := &VerdictSigner{Key: key, KeyID: "verifier-1"}
	v, err := Appraise(genuineSNP(), nil, DefaultPolicy(), Expect{}, AppraiseOptions{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(v.JWS, ".") != 2 {
		t.Fatalf("JWS %q", v.JWS)
	}
	got, err := VerifyVerdictJWS(v.JWS, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != v.ID || got.Status != v.Status || got.VMID != v.VMID || !got.IssuedAt.Equal(v.IssuedAt) {
		t.Fatalf("verified verdict %+v, signed %+v", got, v)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := VerifyVerdictJWS(v.JWS, &other.PublicKey); err == nil {
		t.Fatal("JWS verified with another key")
	}
	parts := strings.Split(v.JWS, ".")
	forged := parts[0] + "." + strings.Replace(parts[1], parts[1][10:12], "AA", 1) + "." + parts[2]
	if forged != v.JWS {
		if _, err := VerifyVerdictJWS(forged, &key.PublicKey); err == nil {
			t.Fatal("changed payload verified")
		}
	}
	for _, bad := range []string{"", "a.b", "a.b.c", parts[0] + "." + parts[1] + ".AAAA"} {
		if _, err := VerifyVerdictJWS(bad, &key.PublicKey); err == nil {
			t.Fatalf("JWS %q verified", bad)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := (&VerdictSigner{Key: p384}).Sign(&v); err == nil {
		t.Fatal("P-384 key accepted for ES256")
	}
}

func TestNewNonce(t *testing.T) {
	n1, n2 := NewNonce(), NewNonce()
	if len(n1) != NonceSize || string(n1) == string(n2) {
		t.Fatal("nonces")
	}
}
