package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

const (
	snpFixture = "../../pkg/evidence/testdata/azure/snp-milan-a.bundle.json"
	tdxFixture = "../../pkg/evidence/testdata/azure/tdx-a.bundle.json"
	// The fixtures' TPM quotes are over the ASCII bytes "challenge".
	fixtureNonce = "Y2hhbGxlbmdl"
)

// exitCode maps a command error to the process exit code main uses.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

// tamperedCopy writes a copy of a bundle with one byte of its HCL report changed.
func tamperedCopy(t *testing.T, src string) string {
	t.Helper()
	raw, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	hcl, err := base64.StdEncoding.DecodeString(m["hcl_report"].(string))
	if err != nil {
		t.Fatal(err)
	}
	hcl[1300] ^= 0x01 // runtime data
	m["hcl_report"] = base64.StdEncoding.EncodeToString(hcl)
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "tampered.json")
	if err := os.WriteFile(p, out, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestEvidenceVerify(t *testing.T) {
	badPolicy := writeFile(t, "bad.yaml", "id: x\nversion: 1\nsnp:\n  nonsense: true\n")
	denyConsole := writeFile(t, "console.yaml", strings.Replace(appraise.DefaultPolicyYAML, "console: allow", "console: deny", 1))
	garbage := writeFile(t, "garbage.json", `{"format":"vigil.evidence/v1","platform":"azure-sev-snp"`)
	missingField := writeFile(t, "missing.json", `{"format":"vigil.evidence/v1","platform":"azure-sev-snp","nonce":"AA=="}`)
	tests := []struct {
		name       string
		args       []string
		code       int
		status     string // verdict status when a verdict is printed
		wantReason string // a reason code the verdict must carry
		stderr     string // text stderr must contain
	}{
		{"snp genuine with nonce", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--vm-id", "26f8bc30-774e-4290-8e7a-535f3b672aee"}, 0, events.VerdictAffirming, "", ""},
		{"tdx genuine with nonce, TCB status unknown", []string{"--bundle", tdxFixture, "--nonce", fixtureNonce, "--vm-id", "6332533D-5649-4D02-8AA7-8F64B7C3EE21"}, 0, events.VerdictWarning, appraise.ReasonPolicyTCBUnknown, appraise.ReasonPolicyTCBUnknown},
		{"tdx without nonce warns", []string{"--bundle", tdxFixture}, 0, events.VerdictWarning, appraise.ReasonFreshnessNonceUnchecked, ""},
		{"snp wrong vm-id", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--vm-id", "00000000-774E-4290-8E7A-535F3B672AEE"}, 1, events.VerdictContraindicated, appraise.ReasonIdentityVMIDMismatch, appraise.ReasonIdentityVMIDMismatch},
		{"tdx wrong vm-id", []string{"--bundle", tdxFixture, "--nonce", fixtureNonce, "--vm-id", "26F8BC30-774E-4290-8E7A-535F3B672AEE"}, 1, events.VerdictContraindicated, appraise.ReasonIdentityVMIDMismatch, ""},
		{"wrong nonce", []string{"--bundle", snpFixture, "--nonce", base64.StdEncoding.EncodeToString([]byte("other"))}, 1, events.VerdictContraindicated, evidence.ReasonTPMNonceMismatch, evidence.ReasonTPMNonceMismatch},
		{"tampered runtime data", []string{"--bundle", tamperedCopy(t, snpFixture), "--nonce", fixtureNonce}, 1, events.VerdictContraindicated, evidence.ReasonBindingMismatch, "verification failed"},
		{"policy denies console", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--policy", denyConsole}, 1, events.VerdictContraindicated, appraise.ReasonPolicyConsole, "policy failed"},
		{"snp with --amd-crl offline is undecided", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--vm-id", "26f8bc30-774e-4290-8e7a-535f3b672aee", "--amd-crl"}, 1, events.VerdictNone, evidence.ReasonSNPCRLUnavailable, evidence.ReasonSNPCRLUnavailable},
		{"tdx unaffected by --amd-crl", []string{"--bundle", tdxFixture, "--nonce", fixtureNonce, "--vm-id", "6332533D-5649-4D02-8AA7-8F64B7C3EE21", "--amd-crl"}, 0, events.VerdictWarning, appraise.ReasonPolicyTCBUnknown, ""},
		{"raw-nonce quote is no answer to a Vigil challenge", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--quote-binding", "challenge"}, 1, events.VerdictContraindicated, evidence.ReasonTPMNonceMismatch, evidence.ReasonTPMNonceMismatch},
		{"raw-nonce quote named as such", []string{"--bundle", snpFixture, "--nonce", fixtureNonce, "--vm-id", "26f8bc30-774e-4290-8e7a-535f3b672aee", "--quote-binding", "raw-nonce"}, 0, events.VerdictAffirming, "", "covers the nonce as it is"},
		{"fixture without its nonce field", []string{"--bundle", withoutNonce(t, snpFixture)}, 1, events.VerdictContraindicated, evidence.ReasonTPMNonceMismatch, "verification failed"},
		{"bad quote-binding", []string{"--bundle", snpFixture, "--quote-binding", "sometimes"}, 2, "", "", "--quote-binding"},
		{"missing bundle flag", nil, 2, "", "", "--bundle is required"},
		{"unreadable bundle", []string{"--bundle", filepath.Join(t.TempDir(), "nope.json")}, 2, "", "", "read bundle"},
		{"not JSON", []string{"--bundle", garbage}, 2, "", "", "not JSON"},
		{"missing field", []string{"--bundle", missingField}, 2, "", "", "hcl_report"},
		{"bad nonce", []string{"--bundle", snpFixture, "--nonce", "!!"}, 2, "", "", "--nonce"},
		{"bad policy", []string{"--bundle", snpFixture, "--policy", badPolicy}, 2, "", "", "nonsense"},
		{"bad vm-key", []string{"--bundle", snpFixture, "--vm-key", "NOT A KEY"}, 2, "", "", "--vm-key"},
		{"unknown flag", []string{"--bundle", snpFixture, "--frobnicate"}, 2, "", "", "frobnicate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"evidence", "verify", "--offline"}, tc.args...)
			stdout, stderr, err := runVigil(context.Background(), args...)
			if got := exitCode(err); got != tc.code {
				t.Fatalf("exit %d (%v), want %d; stderr %s", got, err, tc.code, stderr)
			}
			if err != nil {
				stderr += err.Error()
			}
			if tc.stderr != "" && !strings.Contains(stderr, tc.stderr) {
				t.Fatalf("stderr %q does not mention %q", stderr, tc.stderr)
			}
			if tc.status == "" {
				if stdout != "" {
					t.Fatalf("printed a verdict for unusable input: %s", stdout)
				}
				return
			}
			var v events.Verdict
			if err := json.Unmarshal([]byte(stdout), &v); err != nil {
				t.Fatalf("stdout is not a verdict: %v\n%s", err, stdout)
			}
			if v.Status != tc.status || v.PolicyID == "" || v.EvidenceDigest == "" || v.IssuedAt.IsZero() {
				t.Fatalf("verdict %+v, want status %s", v, tc.status)
			}
			if tc.wantReason != "" {
				found := false
				for _, r := range v.Reasons {
					found = found || r.Code == tc.wantReason
				}
				if !found {
					t.Fatalf("reasons %v lack %s", v.Reasons, tc.wantReason)
				}
			}
		})
	}
}

// withoutNonce writes a copy of the bundle at path with its nonce field
// removed.
func withoutNonce(t *testing.T, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "nonce")
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, "no-nonce.json", string(out))
}

// TestEvidenceVerifyCaptureWithoutNonce: a genuine capture made with no
// qualifying data (no nonce field, empty extraData) is verified, with the
// policy's freshness warning, instead of being refused as malformed
// ("field nonce: missing").
func TestEvidenceVerifyCaptureWithoutNonce(t *testing.T) {
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX} {
		t.Run(platform, func(t *testing.T) {
			stdout, stderr, err := runVigil(context.Background(), "evidence", "simulate", "--platform", platform, "--raw-nonce", "--roots-out", roots)
			if err != nil {
				t.Fatalf("simulate: %v %s", err, stderr)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(stdout), &m); err != nil {
				t.Fatal(err)
			}
			delete(m, "nonce") // as captured: no nonce at all
			raw, err := json.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			bundle := writeFile(t, "capture.json", string(raw))
			out, stderr, err := runVigil(context.Background(), "evidence", "verify", "--offline", "--bundle", bundle, "--test-roots", roots)
			if err != nil {
				t.Fatalf("verify: %v\n%s", err, stderr)
			}
			var v events.Verdict
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				t.Fatal(err)
			}
			if v.Status != events.VerdictWarning || !slices.ContainsFunc(v.Reasons, func(r events.Reason) bool { return r.Code == appraise.ReasonFreshnessNonceUnchecked }) {
				t.Fatalf("verdict %s %v, want a warning with %s", v.Status, v.Reasons, appraise.ReasonFreshnessNonceUnchecked)
			}
			// An issued nonce is never answered by such a capture.
			if _, _, err := runVigil(context.Background(), "evidence", "verify", "--offline", "--bundle", bundle, "--test-roots", roots,
				"--nonce", base64.StdEncoding.EncodeToString(evidence.NewNonce())); exitCode(err) != 1 {
				t.Fatalf("capture without nonce accepted for an issued nonce: %v", err)
			}
		})
	}
}

func TestEvidenceSimulateThenVerify(t *testing.T) {
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	pol := filepath.Join(dir, "policy.yaml")
	nonce := base64.StdEncoding.EncodeToString(evidence.NewNonce())
	for _, tc := range []struct {
		platform, fault string
		code            int
		reason          string
	}{
		{evidence.PlatformAzureSNP, "", 0, ""},
		{evidence.PlatformAzureTDX, "", 0, ""},
		{evidence.PlatformAzureSNP, "debug", 1, appraise.ReasonPolicyDebug},
		{evidence.PlatformAzureTDX, "broken-signature", 1, evidence.ReasonTDXSignatureInvalid},
	} {
		t.Run(tc.platform+"/"+tc.fault, func(t *testing.T) {
			stdout, stderr, err := runVigil(context.Background(), "evidence", "simulate", "--platform", tc.platform,
				"--nonce", nonce, "--roots-out", roots, "--policy-out", pol, "--fault", tc.fault, "--vm-id", "11111111-2222-4333-8444-555555555555")
			if err != nil {
				t.Fatalf("simulate: %v %s", err, stderr)
			}
			bundle := filepath.Join(dir, "bundle.json")
			if err := os.WriteFile(bundle, []byte(stdout), 0o600); err != nil {
				t.Fatal(err)
			}
			// Without the test roots, simulated evidence is never genuine.
			_, _, err = runVigil(context.Background(), "evidence", "verify", "--offline", "--bundle", bundle, "--nonce", nonce)
			if exitCode(err) != 1 {
				t.Fatalf("simulated evidence accepted without test roots: %v", err)
			}
			out, stderr, err := runVigil(context.Background(), "evidence", "verify", "--offline", "--bundle", bundle, "--nonce", nonce,
				"--test-roots", roots, "--policy", pol, "--vm-id", "11111111-2222-4333-8444-555555555555")
			if exitCode(err) != tc.code {
				t.Fatalf("verify exit %d (%v), want %d: %s", exitCode(err), err, tc.code, stderr)
			}
			if tc.reason != "" && !strings.Contains(out, tc.reason) {
				t.Fatalf("verdict lacks %s: %s", tc.reason, out)
			}
		})
	}
	if _, _, err := runVigil(context.Background(), "evidence", "simulate", "--nonce", nonce, "--fault", "gremlins"); exitCode(err) != 2 {
		t.Fatalf("unknown fault: %v", err)
	}
}

func TestEvidencePolicy(t *testing.T) {
	out, _, err := runVigil(context.Background(), "evidence", "policy")
	if err != nil || out != appraise.DefaultPolicyYAML {
		t.Fatalf("default policy: %v %q", err, out)
	}
	good := writeFile(t, "p.yaml", appraise.DefaultPolicyYAML)
	if out, _, err := runVigil(context.Background(), "evidence", "policy", "--check", good); err != nil || !strings.Contains(out, "azure-cvm-default") {
		t.Fatalf("check: %v %q", err, out)
	}
	bad := writeFile(t, "bad.yaml", "id: x\nversion: 0\n")
	if _, _, err := runVigil(context.Background(), "evidence", "policy", "--check", bad); exitCode(err) != 1 {
		t.Fatalf("bad policy accepted: %v", err)
	}
}

// TestEvidenceVerifyAMDCRL verifies simulated SEV-SNP evidence with
// --amd-crl against the simulated AMD KDS, before and after AMD revokes the
// Milan ASK.
func TestEvidenceVerifyAMDCRL(t *testing.T) {
	dir := t.TempDir()
	roots := filepath.Join(dir, "roots.pem")
	pol := filepath.Join(dir, "policy.yaml")
	nonce := base64.StdEncoding.EncodeToString(evidence.NewNonce())
	const vmID = "11111111-2222-4333-8444-555555555555"
	stdout, stderr, err := runVigil(context.Background(), "evidence", "simulate", "--platform", evidence.PlatformAzureSNP,
		"--nonce", nonce, "--roots-out", roots, "--policy-out", pol, "--vm-id", vmID)
	if err != nil {
		t.Fatalf("simulate: %v %s", err, stderr)
	}
	bundle := writeFile(t, "bundle.json", stdout)
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	kds := httptest.NewServer(auth.KDS())
	defer kds.Close()
	verify := func() (string, error) {
		out, _, err := runVigil(context.Background(), "evidence", "verify", "--bundle", bundle, "--nonce", nonce,
			"--test-roots", roots, "--policy", pol, "--vm-id", vmID, "--amd-crl", "--kds-url", kds.URL)
		return out, err
	}
	if out, err := verify(); err != nil {
		t.Fatalf("not revoked: %v %s", err, out)
	}
	if err := auth.RevokeASK("Milan"); err != nil {
		t.Fatal(err)
	}
	out, err := verify()
	if exitCode(err) != 1 || !strings.Contains(out, evidence.ReasonSNPCertRevoked) {
		t.Fatalf("revoked ASK: exit %d (%v), verdict %s", exitCode(err), err, out)
	}
}
