package appraise

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
)

func TestDefaultPolicy(t *testing.T) {
	p := DefaultPolicy()
	if p.ID != "azure-cvm-default" || p.Version != 1 || p.SNP.AllowDebug || p.SNP.VMPL == nil || *p.SNP.VMPL != 0 ||
		!p.Runtime.RequireSecureBoot || !p.Runtime.RequireTPM || p.Schedule.ReattestInterval != 5*time.Minute {
		t.Fatalf("default policy %+v", p)
	}
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p2, err := ParsePolicy(doc)
	if err != nil {
		t.Fatalf("marshalled default policy does not parse: %v\n%s", err, doc)
	}
	d1, _ := p.Digest()
	d2, _ := p2.Digest()
	if d1 != d2 || !strings.HasPrefix(d1, "sha256:") {
		t.Fatalf("digests %s %s", d1, d2)
	}
}

func TestParsePolicyRejects(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "id: x\nversion: 1\nsnp:\n  allow_dbg: true\n", "allow_dbg"},
		{"no id", "version: 1\n", "id"},
		{"no version", "id: x\n", "version"},
		{"platform", "id: x\nversion: 1\nplatforms: [aws]\n", "platform"},
		{"product", "id: x\nversion: 1\nsnp:\n  products: [Rome]\n", "Rome"},
		{"measurement size", "id: x\nversion: 1\nsnp:\n  measurements: [abcd]\n", "48"},
		{"measurement hex", "id: x\nversion: 1\nsnp:\n  measurements: [xyz]\n", "hex"},
		{"tee tcb svn", "id: x\nversion: 1\ntdx:\n  min_tee_tcb_svn: '0102'\n", "16"},
		{"pcr index", "id: x\nversion: 1\npcrs:\n  24: ['" + strings.Repeat("00", 32) + "']\n", "index"},
		{"pcr size", "id: x\nversion: 1\npcrs:\n  7: ['00']\n", "32"},
		{"console", "id: x\nversion: 1\nruntime:\n  console: maybe\n", "console"},
		{"unknown vm id", "id: x\nversion: 1\nidentity:\n  unknown_vm_id: ignore\n", "unknown_vm_id"},
		{"negative age", "id: x\nversion: 1\nfreshness:\n  max_evidence_age: -1m\n", "negative"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParsePolicy([]byte(tc.doc))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

// genuineSNP is a verified-looking result for validation tests.
func genuineSNP() *evidence.Result {
	t, f := true, false
	return &evidence.Result{
		Platform: evidence.PlatformAzureSNP, Genuine: true, NonceChecked: true, PCRBank: "sha256",
		PCRs:        map[int][]byte{7: make([]byte, 32)},
		VMUniqueID:  "ABC",
		RuntimeData: &hcl.RuntimeData{VMConfiguration: hcl.VMConfiguration{SecureBoot: &t, TPMEnabled: &t, ConsoleEnabled: &f, VMUniqueID: "ABC"}},
		SNP:         &evidence.SNPClaims{ProductLine: "Milan", Policy: 0x30000, SMT: true, TCB: evidence.SNPTCB{BootLoader: 4, SNP: 20, Microcode: 200}, Measurement: make([]byte, 48)},
	}
}

func findingCodes(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.Code)
	}
	return out
}

func TestValidate(t *testing.T) {
	now := time.Now()
	tr, fl := true, false
	one := uint32(1)
	// known is what a caller that knows the VM's vmId expects.
	known := evidence.Expect{VMID: "abc"}
	tests := []struct {
		name   string
		policy func(p *Policy)
		result func(r *evidence.Result)
		exp    evidence.Expect
		want   []string
		warn   bool
	}{
		{"clean", nil, nil, evidence.Expect{VMID: "abc"}, nil, false},
		{"debug", nil, func(r *evidence.Result) { r.SNP.Debug = true }, known, []string{ReasonPolicyDebug}, false},
		{"debug allowed", func(p *Policy) { p.SNP.AllowDebug = true }, func(r *evidence.Result) { r.SNP.Debug = true }, known, nil, false},
		{"migration agent", nil, func(r *evidence.Result) { r.SNP.MigrationAgent = true }, known, []string{ReasonPolicyMigrationAgent}, false},
		{"smt denied", func(p *Policy) { p.SNP.AllowSMT = false }, nil, known, []string{ReasonPolicySMT}, false},
		{"vmpl", func(p *Policy) { p.SNP.VMPL = &one }, nil, known, []string{ReasonPolicyVMPL}, false},
		{"tcb", func(p *Policy) { p.SNP.MinTCB = map[string]evidence.SNPTCB{"Milan": {SNP: 21}} }, nil, known, []string{ReasonPolicyTCB}, false},
		{"tcb other product", func(p *Policy) { p.SNP.MinTCB = map[string]evidence.SNPTCB{"Genoa": {SNP: 99}} }, nil, known, nil, false},
		{"measurement", func(p *Policy) { p.SNP.Measurements = []Hex{make([]byte, 47)} }, nil, known, []string{ReasonPolicyMeasurement}, false},
		{"product", func(p *Policy) { p.SNP.Products = []string{"Genoa"} }, nil, known, []string{ReasonPolicyProduct}, false},
		{"platform", func(p *Policy) { p.Platforms = []string{evidence.PlatformAzureTDX} }, nil, known, []string{ReasonPolicyPlatform}, false},
		{"pcr", func(p *Policy) { p.PCRs = map[int][]Hex{7: {make([]byte, 32)}, 4: {make([]byte, 32)}} }, nil, known, []string{ReasonPolicyPCR}, false},
		{"secure boot", nil, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.SecureBoot = &fl }, known, []string{ReasonPolicySecureBoot}, false},
		{"secure boot absent", nil, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.SecureBoot = nil }, known, []string{ReasonPolicySecureBoot}, false},
		{"tpm", nil, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.TPMEnabled = &fl }, known, []string{ReasonPolicyTPMDisabled}, false},
		{"console allowed", nil, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.ConsoleEnabled = &tr }, known, nil, false},
		{"console warn", func(p *Policy) { p.Runtime.Console = Warn }, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.ConsoleEnabled = &tr }, known, []string{ReasonPolicyConsole}, true},
		{"console deny", func(p *Policy) { p.Runtime.Console = Deny }, func(r *evidence.Result) { r.RuntimeData.VMConfiguration.ConsoleEnabled = &tr }, known, []string{ReasonPolicyConsole}, false},
		{"vmid mismatch", nil, nil, evidence.Expect{VMID: "abd"}, []string{ReasonIdentityVMIDMismatch}, false},
		{"vmid missing", nil, func(r *evidence.Result) { r.VMUniqueID = "" }, evidence.Expect{VMID: "abc"}, []string{ReasonIdentityVMIDMissing}, false},
		{"vmid unchecked", func(p *Policy) { p.Identity.CheckVMID = false }, nil, evidence.Expect{VMID: "abd"}, nil, false},
		{"vmid unknown", nil, nil, evidence.Expect{}, []string{ReasonIdentityVMIDUnknown}, true},
		{"vmid unknown deny", func(p *Policy) { p.Identity.UnknownVMID = Deny }, nil, evidence.Expect{}, []string{ReasonIdentityVMIDUnknown}, false},
		{"vmid unknown allowed", func(p *Policy) { p.Identity.UnknownVMID = Allow }, nil, evidence.Expect{}, nil, false},
		{"vmid unknown unset", func(p *Policy) { p.Identity.UnknownVMID = "" }, nil, evidence.Expect{}, nil, false},
		{"vmid unknown unchecked", func(p *Policy) { p.Identity.CheckVMID = false }, nil, evidence.Expect{}, nil, false},
		{"vm key", nil, func(r *evidence.Result) { r.BundleVMKey = "aaaaaaaaaaaaaaaaaaaaaaaaaa" }, evidence.Expect{VMID: "abc", VMKey: "bbbbbbbbbbbbbbbbbbbbbbbbbb"}, []string{ReasonIdentityVMKeyMismatch}, false},
		{"no nonce", nil, func(r *evidence.Result) { r.NonceChecked = false }, known, []string{ReasonFreshnessNonceUnchecked}, true},
		{"old evidence", nil, func(r *evidence.Result) { r.CollectedAt = now.Add(-time.Hour) }, known, []string{ReasonPolicyEvidenceAge}, false},
		{"future evidence", nil, func(r *evidence.Result) { r.CollectedAt = now.Add(time.Hour) }, known, []string{ReasonPolicyEvidenceFuture}, false},
		{"warn list", func(p *Policy) { p.Warn = []string{ReasonPolicyDebug} }, func(r *evidence.Result) { r.SNP.Debug = true }, known, []string{ReasonPolicyDebug}, true},
		{"event log required", func(p *Policy) { p.EventLog.Require = true }, nil, known, []string{ReasonPolicyEventLog}, false},
		{"event log secure boot", func(p *Policy) { p.EventLog.RequireSecureBoot = true }, func(r *evidence.Result) { r.EventLog = &evidence.EventLogClaims{} }, known, []string{ReasonPolicySecureBoot}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultPolicy()
			if tc.policy != nil {
				tc.policy(p)
			}
			r := genuineSNP()
			if tc.result != nil {
				tc.result(r)
			}
			got := p.Validate(r, tc.exp, now)
			if strings.Join(findingCodes(got), ",") != strings.Join(tc.want, ",") {
				t.Fatalf("findings %v, want %v", findingCodes(got), tc.want)
			}
			for _, f := range got {
				if f.Warning != tc.warn {
					t.Fatalf("finding %s warning=%v, want %v", f.Code, f.Warning, tc.warn)
				}
			}
		})
	}
	if got := DefaultPolicy().Validate(&evidence.Result{Genuine: false}, evidence.Expect{}, now); got != nil {
		t.Fatalf("findings for evidence that is not genuine: %v", got)
	}
}

// TestTDXUnknownTCBStatusNotSilent: a verifier without Intel PCS
// collateral cannot tell an out-of-date or revoked TDX platform from a
// current one. The default policy says so in the verdict (a warning); it
// used to pass such evidence as affirming without a word.
func TestTDXUnknownTCBStatusNotSilent(t *testing.T) {
	r := genuineSNP()
	r.Platform, r.SNP = evidence.PlatformAzureTDX, nil
	r.TDX = &evidence.TDXClaims{TEETCBSVN: make([]byte, 16), MRSEAM: make([]byte, 48), MRTD: make([]byte, 48), TDAttributes: make([]byte, 8)}
	for _, tc := range []struct {
		mode    string
		require bool
		status  string
	}{
		{"", false, events.VerdictAffirming},
		{Allow, false, events.VerdictAffirming},
		{Warn, false, events.VerdictWarning},
		{Deny, false, events.VerdictContraindicated},
		{Warn, true, events.VerdictContraindicated},
	} {
		p := DefaultPolicy()
		p.TDX.UnknownTCBStatus, p.TDX.RequireTCBStatus = tc.mode, tc.require
		v, err := Result(r, nil, p, evidence.Expect{VMID: "abc"}, Options{})
		if err != nil {
			t.Fatal(err)
		}
		unknown := slices.ContainsFunc(v.Reasons, func(r events.Reason) bool { return r.Code == ReasonPolicyTCBUnknown })
		if v.Status != tc.status || unknown != (tc.status != events.VerdictAffirming) {
			t.Errorf("unknown_tcb_status %q require %v: verdict %s %v, want %s", tc.mode, tc.require, v.Status, v.Reasons, tc.status)
		}
	}
	if DefaultPolicy().TDX.UnknownTCBStatus != Warn {
		t.Fatal("the default policy does not warn about an unknown TDX TCB status")
	}
	if _, err := ParsePolicy([]byte(strings.Replace(DefaultPolicyYAML, "unknown_tcb_status: warn", "unknown_tcb_status: shrug", 1))); err == nil {
		t.Fatal("policy with unknown_tcb_status shrug accepted")
	}
}

func TestValidateTDX(t *testing.T) {
	now := time.Now()
	base := func() *evidence.Result {
		r := genuineSNP()
		r.Platform, r.SNP = evidence.PlatformAzureTDX, nil
		r.TDX = &evidence.TDXClaims{TEETCBSVN: make([]byte, 16), MRSEAM: make([]byte, 48), MRTD: make([]byte, 48), TDAttributes: make([]byte, 8)}
		return r
	}
	p := DefaultPolicy()
	known := base()
	known.TDX.TCBStatus = "UpToDate"
	if got := p.Validate(known, evidence.Expect{VMID: "abc"}, now); len(got) != 0 {
		t.Fatalf("clean TDX: %v", findingCodes(got))
	}
	r := base()
	r.TDX.Debug = true
	r.TDX.TCBStatus = "SWHardeningNeeded"
	got := p.Validate(r, evidence.Expect{VMID: "abc"}, now)
	if strings.Join(findingCodes(got), ",") != ReasonPolicyDebug+","+ReasonPolicyTCBStatus || got[0].Warning || !got[1].Warning {
		t.Fatalf("findings %+v", got)
	}
	r.TDX.Debug, r.TDX.TCBStatus = false, "OutOfDate"
	if got := p.Validate(r, evidence.Expect{VMID: "abc"}, now); len(got) != 1 || got[0].Warning {
		t.Fatalf("out of date: %+v", got)
	}
	p.TDX.RequireTCBStatus = true
	p.TDX.MinTEETCBSVN = Hex{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	p.TDX.MRSEAM = []Hex{make([]byte, 48)}
	p.TDX.MRTD = []Hex{append(make([]byte, 47), 1)}
	if got := p.Validate(base(), evidence.Expect{VMID: "abc"}, now); strings.Join(findingCodes(got), ",") != ReasonPolicyMeasurement+","+ReasonPolicyTCB+","+ReasonPolicyTCBUnknown {
		t.Fatalf("findings %v", findingCodes(got))
	}
}
