package sim_test

import (
	"context"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

func TestFaults(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	pol := auth.Policy()
	cases := []struct {
		name   string
		faults sim.Faults
		want   string // first reason code; "" means affirming
	}{
		{"healthy", sim.Faults{}, ""},
		{"debug", sim.Faults{DebugPolicy: true}, appraise.ReasonPolicyDebug},
		{"low TCB", sim.Faults{LowTCB: true}, appraise.ReasonPolicyTCB},
		{"wrong measurement", sim.Faults{WrongMeasurement: true}, appraise.ReasonPolicyMeasurement},
		{"unexpected boot", sim.Faults{UnexpectedBoot: true}, appraise.ReasonPolicyPCR},
		{"wrong vmUniqueId", sim.Faults{WrongVMID: true}, appraise.ReasonIdentityVMIDMismatch},
		{"stale nonce", sim.Faults{StaleNonce: true}, evidence.ReasonTPMNonceMismatch},
		{"broken binding", sim.Faults{BrokenBinding: true}, evidence.ReasonBindingMismatch},
		{"broken quote", sim.Faults{BrokenQuote: true}, evidence.ReasonTPMSignatureInvalid},
	}
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX} {
		vm, err := auth.NewVM(sim.VMConfig{Platform: platform, AK: sim.AKECDSAP256, EventLog: true})
		if err != nil {
			t.Fatal(err)
		}
		brokenSig := evidence.ReasonSNPSignatureInvalid
		if platform == evidence.PlatformAzureTDX {
			brokenSig = evidence.ReasonTDXSignatureInvalid
		}
		all := append(cases, struct {
			name   string
			faults sim.Faults
			want   string
		}{"broken signature", sim.Faults{BrokenSignature: true}, brokenSig})
		for _, tc := range all {
			t.Run(platform+"/"+tc.name, func(t *testing.T) {
				vm.SetFaults(sim.Faults{})
				if _, err := vm.Respond(evidence.NewNonce()); err != nil { // a previous challenge
					t.Fatal(err)
				}
				vm.SetFaults(tc.faults)
				nonce := evidence.NewNonce()
				raw, err := vm.Respond(nonce)
				if err != nil {
					t.Fatal(err)
				}
				exp := evidence.Expect{Nonce: nonce, VMID: vm.VMID(), VMKey: vm.VMKey()}
				verdict, res, err := appraise.Evidence(context.Background(), v, raw, exp, pol, appraise.Options{})
				if err != nil {
					t.Fatal(err)
				}
				if tc.want == "" {
					if verdict.Status != events.VerdictAffirming || len(verdict.Reasons) != 0 {
						t.Fatalf("status %s reasons %v", verdict.Status, verdict.Reasons)
					}
					if res.EventLog == nil || !res.EventLog.SecureBoot {
						t.Fatalf("event log claims %+v", res.EventLog)
					}
					return
				}
				if verdict.Status != events.VerdictContraindicated || len(verdict.Reasons) == 0 || verdict.Reasons[0].Code != tc.want {
					t.Fatalf("status %s reasons %v, want first %s", verdict.Status, verdict.Reasons, tc.want)
				}
			})
		}
	}
}
