package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

var update = flag.Bool("update", false, "rewrite the golden files")

func TestVMKeyVectors(t *testing.T) {
	tests := []struct{ id, want string }{
		{"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/cvm-01", "aldtmn2tg7p3rh5huznzu5dk3n"},
		{"/SUBSCRIPTIONS/00000000-0000-0000-0000-000000000001/RESOURCEGROUPS/RG-PROD/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/CVM-01", "aldtmn2tg7p3rh5huznzu5dk3n"},
		{"/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg-prod/providers/microsoft.compute/virtualmachines/cvm-01", "aldtmn2tg7p3rh5huznzu5dk3n"},
		{"/subscriptions/7d1e8f2a-1234-4abc-9def-0123456789ab/resourcegroups/CONFIDENTIAL/providers/microsoft.compute/virtualmachines/SNP-Milan-A", "7wwtddi43syxlkglcscb3kjkrg"},
		{"", "4oymiquy7qobjgx36tejs35zeq"},
	}
	for _, tc := range tests {
		got := events.VMKey(tc.id)
		if got != tc.want {
			t.Errorf("VMKey(%q) = %q, want %q", tc.id, got, tc.want)
		}
		if !events.ValidVMKey(got) {
			t.Errorf("ValidVMKey(%q) = false", got)
		}
	}
	for _, bad := range []string{"", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "aldtmn2tg7p3rh5huznzu5dk3", "aldtmn2tg7p3rh5huznzu5dk3n1", "aldtmn2tg7p3rh5huznzu5dk3*", "aldtmn2tg7p3rh5huznzu5dk.n"} {
		if events.ValidVMKey(bad) {
			t.Errorf("ValidVMKey(%q) = true", bad)
		}
	}
}

func TestSubjects(t *testing.T) {
	vm := "aldtmn2tg7p3rh5huznzu5dk3n"
	tests := []struct{ got, want string }{
		{events.RawSubject("eventgrid"), "vigil.ingest.raw.eventgrid"},
		{events.RawSubject("Event Grid.ns"), "vigil.ingest.raw.event_grid_ns"},
		{events.LifecycleSubject(vm), "vigil.events.vm." + vm + ".lifecycle"},
		{events.ConfigSubject(vm), "vigil.events.vm." + vm + ".config"},
		{events.VerdictSubject(vm), "vigil.events.vm." + vm + ".verdict"},
		{events.StateSubject(vm), "vigil.events.vm." + vm + ".state"},
		{events.KeySubject(vm), "vigil.events.vm." + vm + ".key"},
		{events.PolicySubject("default", "alice"), "vigil.events.policy.default.alice"},
		{events.PolicySubject("Default Policy", "alice"), "vigil.events.policy.default_policy.alice"},
		{events.PolicyVersionsFilter("default"), "vigil.events.policy.default.*"},
		{events.PolicyActorFromSubject("vigil.events.policy.default.alice"), "alice"},
		{events.PolicyActorFromSubject("vigil.events.policy.default"), ""},
		{events.KeyguardNonceSubject(vm), "vigil.keyguard.nonce." + vm},
		{events.KeyguardReleaseSubject(vm), "vigil.keyguard.release." + vm},
		{events.AttestJobSubject(vm), "vigil.jobs.attest." + vm},
		{events.ChallengeSubject(vm), "vigil.agent." + vm + ".challenge"},
		{events.AlertSubject(events.SeverityCritical, vm), "vigil.alert.critical." + vm},
		{events.AlertSubject(events.SeverityInfo, ""), "vigil.alert.info.fleet"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
	for _, s := range []string{events.LifecycleSubject(vm), events.AttestJobSubject(vm), events.ChallengeSubject(vm), events.AlertSubject(events.SeverityHigh, vm)} {
		if got := events.VMFromSubject(s); got != vm {
			t.Errorf("VMFromSubject(%q) = %q", s, got)
		}
	}
	if got := events.VMFromSubject("vigil.events.policy.default"); got != "" {
		t.Errorf("VMFromSubject(policy) = %q", got)
	}
}

// goldenPayloads is one fixed example of every payload type. A change in
// their JSON encoding is a wire change and shows up as a golden diff.
func goldenPayloads() map[string]any {
	at := time.Date(2026, 11, 27, 10, 30, 0, 0, time.UTC)
	vm := "aldtmn2tg7p3rh5huznzu5dk3n"
	rid := "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/cvm-01"
	vmid := "26F8BC30-774E-4290-8E7A-535F3B672AEE"
	reasons := []events.Reason{{Code: "policy.debug_enabled", Message: "SNP guest policy allows debugging"}}
	return map[string]any{
		events.TypeRaw: events.Raw{Source: "eventgrid", Schema: "eventgrid", EventID: "0f5c4b1e-1111-2222-3333-444455556666", ReceivedAt: at, Event: json.RawMessage(`{"id":"0f5c4b1e-1111-2222-3333-444455556666","eventType":"Microsoft.Resources.ResourceActionSuccess"}`)},
		events.TypeLifecycle: events.Lifecycle{VMKey: vm, ResourceID: rid, VMID: vmid, Kind: events.LifecycleStarted, Subscription: "00000000-0000-0000-0000-000000000001",
			ResourceGroup: "rg-prod", Name: "cvm-01", Operation: "Microsoft.Compute/virtualMachines/start/action", Outcome: "Succeeded", Origin: "eventgrid",
			AzureEventID: "0f5c4b1e-1111-2222-3333-444455556666", CorrelationID: "c0ffee00-0000-0000-0000-000000000000", OccurredAt: at},
		events.TypeConfig: events.Config{VMKey: vm, ResourceID: rid, VMID: vmid, Compliant: false, ObservedAt: at,
			Findings: []events.Finding{{Code: "disk.encryption_not_pre_boot", Severity: events.SeverityWarning, Field: "storageProfile.osDisk.managedDisk.securityProfile.securityEncryptionType", Message: "OS disk uses VMGuestStateOnly"}}},
		events.TypeVerdict: events.Verdict{ID: "v-1", VMKey: vm, ResourceID: rid, VMID: vmid, Platform: "azure-sev-snp", Status: events.VerdictContraindicated,
			TrustVector: events.TrustVector{InstanceIdentity: 2, Configuration: 96, Executables: 2, Hardware: 2},
			Reasons:     reasons, EvidenceDigest: "sha256:00", PolicyID: "azure-cvm-default", PolicyVersion: 3, VerifierBuild: "vigil dev", Nonce: "Y2hhbGxlbmdl",
			TCB: &events.TCB{BootLoader: 4, TEE: 0, SNP: 24, Microcode: 219, Measurement: "ab", Product: "Milan"}, JobID: "j-1", Attempt: 1, IssuedAt: at},
		events.TypeState:  events.State{VMKey: vm, ResourceID: rid, VMID: vmid, From: events.StatusTrusted, To: events.StatusUntrusted, Reasons: reasons, VerdictID: "v-1", ChangedAt: at},
		events.TypeKey:    events.Key{VMKey: vm, VMID: vmid, Action: events.KeyRevoked, KeyName: "disk-key", Backend: "local", Reason: "status untrusted", Actor: "keyguard", CauseID: "e-1", LatencyMS: 3.5, At: at},
		events.TypePolicy: events.Policy{Name: "default", Version: 3, Digest: "sha256:00", Document: "version: 3\n", Actor: "alice", Reason: "raise minimum TCB", At: at},
		events.TypeAlert:  events.Alert{Severity: events.SeverityCritical, Code: "vm.untrusted", VMKey: vm, ResourceID: rid, Message: "cvm-01 is untrusted", Reasons: reasons, CauseID: "v-1", Source: "attest-worker", At: at},
		events.TypeJob:    events.Job{VMKey: vm, ResourceID: rid, VMID: vmid, Reason: "started", Attempt: 1, RequestedAt: at},
		"vigil-vms": events.VM{VMKey: vm, ResourceID: rid, VMID: vmid, Subscription: "00000000-0000-0000-0000-000000000001", ResourceGroup: "rg-prod", Name: "cvm-01",
			Location: "westeurope", Size: "Standard_DC4as_v5", SecurityType: "ConfidentialVM", PowerState: "running", Lifecycle: events.LifecycleStarted, EventTime: at, EnrichedAt: at, UpdatedAt: at},
		"vigil-status": events.VMStatus{VMKey: vm, ResourceID: rid, VMID: vmid, Status: events.StatusTrusted, Since: at, LastVerdictID: "v-1", LastVerdictStatus: events.VerdictAffirming,
			LastVerdictAt: at, LastGoodAt: at, LastAttemptAt: at, NextDueAt: at.Add(5 * time.Minute), UpdatedAt: at},
	}
}

func TestGoldenPayloads(t *testing.T) {
	for name, v := range goldenPayloads() {
		t.Run(name, func(t *testing.T) {
			got, err := json.MarshalIndent(v, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", "golden", name+".json")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("wire format of %s changed:\n got: %s\nwant: %s", name, got, want)
			}
		})
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	e, err := events.New(events.TypeJob, "ingest", "vigil.jobs.attest.x", events.Job{VMKey: "x", Reason: "started"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	p, err := events.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != e.ID || !p.Time.Equal(e.Time) || p.SpecVersion != "1.0" || p.DataContentType != "application/json" {
		t.Fatalf("round trip changed the envelope: %+v vs %+v", p, e)
	}
	var j events.Job
	if err := p.Decode(events.TypeJob, &j); err != nil || j.Reason != "started" {
		t.Fatalf("decode: %v %+v", err, j)
	}
	if err := p.Decode(events.TypeVerdict, &j); !errors.Is(err, events.ErrWrongType) {
		t.Fatalf("decode with wrong type: %v", err)
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"not json", `{`, "unexpected end"},
		{"wrong spec version", `{"specversion":"0.3","id":"a","type":"t","source":"s"}`, "specversion"},
		{"no id", `{"specversion":"1.0","type":"t","source":"s"}`, "missing id"},
		{"no type", `{"specversion":"1.0","id":"a","source":"s"}`, "missing type"},
		{"no source", `{"specversion":"1.0","id":"a","type":"t"}`, "missing source"},
		{"too large", `{"specversion":"1.0","id":"a","type":"t","source":"s","data":"` + strings.Repeat("a", events.MaxEnvelopeSize) + `"}`, "exceeds the limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := events.Parse([]byte(tc.in))
			if !errors.Is(err, events.ErrInvalidEnvelope) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalidEnvelope mentioning %q", err, tc.want)
			}
		})
	}
}

// TestAlertStateCompatible: an alert stored before keys and states existed
// reads as firing without a key, and a firing or resolved alert keeps them.
func TestAlertStateCompatible(t *testing.T) {
	tests := []struct {
		name     string
		json     string
		key      string
		resolved bool
	}{
		{"old alert", `{"severity":"high","code":"vm.stale","vm_key":"k","message":"m","at":"2026-01-01T00:00:00Z"}`, "", false},
		{"firing", `{"severity":"high","code":"vm.stale","vm_key":"k","message":"m","at":"2026-01-01T00:00:00Z","key":"k/attestation","state":"firing"}`, "k/attestation", false},
		{"resolved", `{"severity":"info","code":"vm.recovered","vm_key":"k","message":"m","at":"2026-01-01T00:00:00Z","key":"k/attestation","state":"resolved"}`, "k/attestation", true},
	}
	for _, tc := range tests {
		var a events.Alert
		if err := json.Unmarshal([]byte(tc.json), &a); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if a.Key != tc.key || a.Resolved() != tc.resolved {
			t.Errorf("%s: key %q resolved %v, want %q %v", tc.name, a.Key, a.Resolved(), tc.key, tc.resolved)
		}
	}
	b, err := json.Marshal(events.Alert{Code: "c"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "state") || strings.Contains(string(b), `"key"`) {
		t.Errorf("an alert without key and state encodes them: %s", b)
	}
	if got := events.AlertKey("vm1", "attestation"); got != "vm1/attestation" {
		t.Errorf("AlertKey = %q", got)
	}
	if got := events.AlertDLQSubject("Sub-1"); got != "vigil.alertdlq.dead.sub-1" {
		t.Errorf("AlertDLQSubject = %q", got)
	}
}
