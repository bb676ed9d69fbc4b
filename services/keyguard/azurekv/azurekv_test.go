package azurekv_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv/azurekvtest"
)

const (
	vmA = "26F8BC30-774E-4290-8E7A-535F3B672AEE"
	vmB = "9C1D4E21-0B7A-4A57-9E4C-1F0A6B2E7D11"
)

// cvmPolicy is the shape of Azure's confidential VM key release policy,
// with the VMs allowed named by vmId.
const cvmPolicy = `{
  "version": "1.0.0",
  "anyOf": [
    {
      "authority": "https://sharedweu.weu.attest.azure.net",
      "allOf": [
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
        {"anyOf": [
          {"claim": "x-ms-azurevm-vmid", "equals": "26F8BC30-774E-4290-8E7A-535F3B672AEE"},
          {"claim": "x-ms-azurevm-vmid", "equals": "9C1D4E21-0B7A-4A57-9E4C-1F0A6B2E7D11"}
        ]}
      ]
    }
  ]
}`

// anyOfPolicy lets any compliant SNP or TDX CVM have the key.
const anyOfPolicy = `{
  "version": "1.0.0",
  "anyOf": [
    {
      "authority": "https://sharedweu.weu.attest.azure.net",
      "anyOf": [
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "tdxvm"}
      ]
    }
  ]
}`

func noHolders(context.Context, string, string) (int, error) { return 0, nil }

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func canonical(t *testing.T, doc string) string {
	t.Helper()
	p, err := azurekv.ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	b, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// patchedPolicy decodes the release policy sent in a PATCH body.
func patchedPolicy(t *testing.T, c azurekvtest.RestCall) *azurekv.Policy {
	t.Helper()
	rp, ok := c.Body["release_policy"].(map[string]any)
	if !ok {
		t.Fatalf("%s body has no release_policy: %v", c, c.Body)
	}
	data, _ := rp["data"].(string)
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(data, "="))
	if err != nil {
		t.Fatalf("release_policy.data is not base64url: %v", err)
	}
	p, err := azurekv.ParsePolicy(raw)
	if err != nil {
		t.Fatalf("patched policy: %v", err)
	}
	return p
}

func patchedEnabled(t *testing.T, c azurekvtest.RestCall) bool {
	t.Helper()
	attrs, ok := c.Body["attributes"].(map[string]any)
	if !ok {
		t.Fatalf("%s body has no attributes: %v", c, c.Body)
	}
	if _, has := c.Body["release_policy"]; has {
		t.Fatalf("%s changes the release policy too: %v", c, c.Body)
	}
	e, ok := attrs["enabled"].(bool)
	if !ok {
		t.Fatalf("%s attributes without enabled: %v", c, attrs)
	}
	return e
}

func TestRevokeRewritesMutablePolicyAndRestoreReverses(t *testing.T) {
	v := azurekvtest.NewVault()
	v.AddKey("disk", "v1", true, true, []byte(cvmPolicy), false)
	b := v.Backend(t, "")
	ctx := ctxT(t)

	st, err := b.Revoke(ctx, "disk", "v1", vmA, azurekv.State{}, noHolders)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Versions) != 1 || st.Versions[0] != (azurekv.VersionAction{Version: "v1", Action: azurekv.ActionPolicy}) || st.VMID != vmA {
		t.Fatalf("state %+v", st)
	}
	calls := v.TakeCalls()
	p := azurekvtest.Patches(calls)
	if len(p) != 1 || p[0].Path != "/keys/disk/v1" {
		t.Fatalf("REST calls %v, want one PATCH /keys/disk/v1", calls)
	}
	sent := patchedPolicy(t, p[0])
	if !sent.Excludes(azurekv.DefaultVMIDClaim, vmA) {
		t.Fatalf("patched policy still lets %s have the key: %+v", vmA, sent)
	}
	if sent.Excludes(azurekv.DefaultVMIDClaim, vmB) {
		t.Fatal("patched policy shuts out the other VM too")
	}
	if _, has := p[0].Body["attributes"]; has {
		t.Fatal("revocation by policy touched the key attributes")
	}
	if !v.Enabled("disk", "v1") || !v.Policy(t, "disk", "v1").Excludes(azurekv.DefaultVMIDClaim, strings.ToLower(vmA)) {
		t.Fatal("vault state after revoke")
	}

	// Revoking again changes nothing.
	if _, err := b.Revoke(ctx, "disk", "v1", vmA, st, noHolders); err != nil {
		t.Fatal(err)
	}
	if p := azurekvtest.Patches(v.TakeCalls()); len(p) != 0 {
		t.Fatalf("second revoke patched: %v", p)
	}

	if err := b.Restore(ctx, "disk", st, noHolders); err != nil {
		t.Fatal(err)
	}
	p = azurekvtest.Patches(v.TakeCalls())
	if len(p) != 1 || p[0].Path != "/keys/disk/v1" {
		t.Fatalf("restore calls %v", p)
	}
	got, _ := v.Policy(t, "disk", "v1").Marshal()
	if string(got) != canonical(t, cvmPolicy) {
		t.Fatalf("restored policy\n%s\nwant\n%s", got, canonical(t, cvmPolicy))
	}
}

func TestRevokeAnyOfAuthorityWrapsAndRestoreUnwraps(t *testing.T) {
	v := azurekvtest.NewVault()
	v.AddKey("data", "v1", true, true, []byte(anyOfPolicy), false)
	b := v.Backend(t, azurekv.ModePolicy)
	ctx := ctxT(t)
	st, err := b.Revoke(ctx, "data", "v1", vmA, azurekv.State{}, noHolders)
	if err != nil {
		t.Fatal(err)
	}
	pol := v.Policy(t, "data", "v1")
	if !pol.Excludes(azurekv.DefaultVMIDClaim, vmA) || pol.Excludes(azurekv.DefaultVMIDClaim, vmB) {
		t.Fatalf("rewritten policy %+v", pol)
	}
	// A second VM revoked on the same key: both excluded.
	stB, err := b.Revoke(ctx, "data", "v1", vmB, azurekv.State{}, noHolders)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Restore(ctx, "data", st, noHolders); err != nil {
		t.Fatal(err)
	}
	pol = v.Policy(t, "data", "v1")
	if pol.Excludes(azurekv.DefaultVMIDClaim, vmA) || !pol.Excludes(azurekv.DefaultVMIDClaim, vmB) {
		t.Fatal("restoring A must leave B excluded and only B")
	}
	if err := b.Restore(ctx, "data", stB, noHolders); err != nil {
		t.Fatal(err)
	}
	got, _ := v.Policy(t, "data", "v1").Marshal()
	if string(got) != canonical(t, anyOfPolicy) {
		t.Fatalf("restored policy\n%s\nwant\n%s", got, canonical(t, anyOfPolicy))
	}
}

func TestRevokeDisablesWhenPolicyCannotBeRewritten(t *testing.T) {
	unknownField := `{"version":"1.0.0","anyOf":[{"authority":"https://a","allOf":[{"claim":"c","equals":"x"}],"future":true}]}`
	cases := []struct {
		name      string
		mode      string
		policy    string
		immutable bool
		vmid      string
	}{
		{"immutable", "", cvmPolicy, true, vmA},
		{"configured", azurekv.ModeDisable, cvmPolicy, false, vmA},
		{"unknown field", "", unknownField, false, vmA},
		{"vmid unknown", "", cvmPolicy, false, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := azurekvtest.NewVault()
			v.AddKey("disk", "v1", true, true, []byte(tc.policy), tc.immutable)
			b := v.Backend(t, tc.mode)
			ctx := ctxT(t)
			st, err := b.Revoke(ctx, "disk", "v1", tc.vmid, azurekv.State{}, noHolders)
			if err != nil {
				t.Fatal(err)
			}
			if st.Versions[0].Action != azurekv.ActionDisable {
				t.Fatalf("action %q, want disable", st.Versions[0].Action)
			}
			p := azurekvtest.Patches(v.TakeCalls())
			if len(p) != 1 || p[0].Path != "/keys/disk/v1" || patchedEnabled(t, p[0]) {
				t.Fatalf("calls %v, want one PATCH disabling /keys/disk/v1", p)
			}
			if v.Enabled("disk", "v1") {
				t.Fatal("key still enabled")
			}
			if err := b.Restore(ctx, "disk", st, noHolders); err != nil {
				t.Fatal(err)
			}
			p = azurekvtest.Patches(v.TakeCalls())
			if len(p) != 1 || !patchedEnabled(t, p[0]) || !v.Enabled("disk", "v1") {
				t.Fatalf("restore calls %v, want one PATCH enabling", p)
			}
		})
	}
}

func TestDisabledKeySharedByTwoRevokedVMs(t *testing.T) {
	v := azurekvtest.NewVault()
	v.AddKey("disk", "v1", true, true, []byte(cvmPolicy), true)
	b := v.Backend(t, "")
	ctx := ctxT(t)
	// holders: the grants of other VMs that are revoked and hold v1.
	held := map[string]azurekv.State{}
	holdersFor := func(self string) azurekv.HoldersFunc {
		return func(_ context.Context, key, version string) (int, error) {
			n := 0
			for vm, st := range held {
				if vm != self && st.Holds(version) {
					n++
				}
			}
			return n, nil
		}
	}
	stA, err := b.Revoke(ctx, "disk", "v1", vmA, azurekv.State{}, holdersFor(vmA))
	if err != nil {
		t.Fatal(err)
	}
	held[vmA] = stA
	stB, err := b.Revoke(ctx, "disk", "v1", vmB, azurekv.State{}, holdersFor(vmB))
	if err != nil {
		t.Fatal(err)
	}
	if !stB.Holds("v1") {
		t.Fatalf("B's revocation does not hold the disabled version: %+v", stB)
	}
	held[vmB] = stB
	v.TakeCalls()

	delete(held, vmA)
	if err := b.Restore(ctx, "disk", stA, holdersFor(vmA)); err != nil {
		t.Fatal(err)
	}
	if p := azurekvtest.Patches(v.TakeCalls()); len(p) != 0 || v.Enabled("disk", "v1") {
		t.Fatalf("restoring A enabled the key B still needs disabled: %v", p)
	}
	delete(held, vmB)
	if err := b.Restore(ctx, "disk", stB, holdersFor(vmB)); err != nil {
		t.Fatal(err)
	}
	if !v.Enabled("disk", "v1") {
		t.Fatal("key not enabled after the last restore")
	}
}

func TestKeyDisabledByOperatorStaysDisabled(t *testing.T) {
	v := azurekvtest.NewVault()
	v.AddKey("disk", "v1", false, true, []byte(cvmPolicy), true)
	b := v.Backend(t, "")
	ctx := ctxT(t)
	st, err := b.Revoke(ctx, "disk", "v1", vmA, azurekv.State{}, noHolders)
	if err != nil {
		t.Fatal(err)
	}
	if st.Versions[0].Action != azurekv.ActionNone {
		t.Fatalf("action %q, want none", st.Versions[0].Action)
	}
	if err := b.Restore(ctx, "disk", st, noHolders); err != nil {
		t.Fatal(err)
	}
	if p := azurekvtest.Patches(v.TakeCalls()); len(p) != 0 || v.Enabled("disk", "v1") {
		t.Fatalf("calls %v: a key someone else disabled must stay disabled", p)
	}
}

func TestRevokeEveryVersionAndResumeAfterFailure(t *testing.T) {
	v := azurekvtest.NewVault()
	v.AddKey("disk", "v1", true, true, []byte(cvmPolicy), false)
	v.AddKey("disk", "v2", true, true, []byte(cvmPolicy), true)
	v.AddKey("disk", "v3", true, false, nil, false) // not exportable: nothing to revoke
	v.FailNext["PATCH disk/v2"] = 1
	b := v.Backend(t, "")
	ctx := ctxT(t)

	st, err := b.Revoke(ctx, "disk", "", vmA, azurekv.State{}, noHolders)
	if err == nil {
		t.Fatal("injected failure not reported")
	}
	if len(st.Versions) != 1 || st.Versions[0].Version != "v1" {
		t.Fatalf("partial state %+v, want v1 done", st)
	}
	calls := v.TakeCalls()
	var listed bool
	for _, c := range calls {
		if c.Method == http.MethodGet && c.Path == "/keys/disk/versions" {
			listed = true
		}
	}
	if !listed {
		t.Fatalf("versions not listed: %v", calls)
	}

	st, err = b.Revoke(ctx, "disk", "", vmA, st, noHolders)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"v1": azurekv.ActionPolicy, "v2": azurekv.ActionDisable, "v3": azurekv.ActionNone}
	if len(st.Versions) != 3 {
		t.Fatalf("state %+v", st)
	}
	for _, va := range st.Versions {
		if want[va.Version] != va.Action {
			t.Fatalf("version %s: action %s, want %s", va.Version, va.Action, want[va.Version])
		}
	}
	if v.Enabled("disk", "v2") || !v.Enabled("disk", "v1") {
		t.Fatal("vault state")
	}
	if err := b.Restore(ctx, "disk", st, noHolders); err != nil {
		t.Fatal(err)
	}
	if !v.Enabled("disk", "v2") || v.Policy(t, "disk", "v1").Excludes(azurekv.DefaultVMIDClaim, vmA) {
		t.Fatal("restore incomplete")
	}
}

func TestPolicyAnalysis(t *testing.T) {
	cases := []struct {
		name, doc string
		excludesA bool
	}{
		{"lists A", cvmPolicy, false},
		{"lists only B", `{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"x-ms-azurevm-vmid","equals":"` + vmB + `"}]}]}`, true},
		{"B in one authority, open other", `{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"x-ms-azurevm-vmid","equals":"` + vmB + `"}]},{"authority":"b","allOf":[{"claim":"x","exists":true}]}]}`, false},
		{"anyOf all B", `{"version":"1.0.0","anyOf":[{"authority":"a","anyOf":[{"claim":"x-ms-azurevm-vmid","equals":"` + vmB + `"},{"allOf":[{"claim":"x-ms-azurevm-vmid","notEquals":"` + vmA + `"},{"claim":"x-ms-azurevm-vmid","notEquals":"` + strings.ToLower(vmA) + `"}]}]}]}`, true},
		{"only upper excluded", `{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"x-ms-azurevm-vmid","notEquals":"` + vmA + `"}]}]}`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := azurekv.ParsePolicy([]byte(tc.doc))
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Excludes(azurekv.DefaultVMIDClaim, vmA); got != tc.excludesA {
				t.Fatalf("Excludes(A) = %t, want %t", got, tc.excludesA)
			}
		})
	}
	for _, bad := range []string{
		`{"version":"1.0.0","anyOf":[]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a"}]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"c"}]}]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"c","equals":"1","exists":true}]}]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"c","matches":"x"}]}]}`,
		`{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"claim":"c","equals":"x"}]}]} {}`,
	} {
		if _, err := azurekv.ParsePolicy([]byte(bad)); !errors.Is(err, azurekv.ErrPolicyNotRewritable) {
			t.Errorf("ParsePolicy(%s) = %v, want ErrPolicyNotRewritable", bad, err)
		}
	}
}

func FuzzPolicyExcludeRoundTrip(f *testing.F) {
	f.Add([]byte(cvmPolicy), vmA)
	f.Add([]byte(anyOfPolicy), vmB)
	f.Add([]byte(`{"version":"1.0.0","anyOf":[{"authority":"a","allOf":[{"anyOf":[{"claim":"k","greater":3}]}]}]}`), "abc")
	f.Fuzz(func(t *testing.T, doc []byte, vmid string) {
		p, err := azurekv.ParsePolicy(doc)
		if err != nil || vmid == "" {
			return
		}
		before, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		q, err := azurekv.ParsePolicy(before)
		if err != nil {
			t.Fatalf("re-parse of marshalled policy: %v", err)
		}
		q.Exclude(azurekv.DefaultVMIDClaim, vmid)
		if !q.Excludes(azurekv.DefaultVMIDClaim, vmid) {
			t.Fatalf("after Exclude the policy still admits %q", vmid)
		}
		if q.Exclude(azurekv.DefaultVMIDClaim, vmid) {
			t.Fatal("Exclude is not idempotent")
		}
		enc, _ := q.Marshal()
		r, err := azurekv.ParsePolicy(enc)
		if err != nil {
			t.Fatalf("rewritten policy does not parse: %v", err)
		}
		r.Unexclude(azurekv.DefaultVMIDClaim, vmid)
		after, _ := r.Marshal()
		if string(before) != string(after) && !unwrapEquivalent(before, after) {
			t.Fatalf("round trip changed the policy\n%s\n%s", before, after)
		}
	})
}

// unwrapEquivalent accepts the one normalisation Unexclude may make: an
// authority whose allOf held a single anyOf comes back as anyOf.
func unwrapEquivalent(before, after []byte) bool {
	p, err1 := azurekv.ParsePolicy(before)
	q, err2 := azurekv.ParsePolicy(after)
	if err1 != nil || err2 != nil || len(p.AnyOf) != len(q.AnyOf) {
		return false
	}
	for i := range p.AnyOf {
		a, b := p.AnyOf[i], q.AnyOf[i]
		if len(a.AllOf) == 1 && a.AllOf[0].Claim == "" && len(a.AllOf[0].AnyOf) > 0 && a.AllOf[0].AllOf == nil {
			a.AnyOf, a.AllOf = a.AllOf[0].AnyOf, nil
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if string(ja) != string(jb) {
			return false
		}
	}
	return true
}
