package sim_test

import (
	"context"
	"fmt"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// A fleet of simulated VMs answers challenges; a verifier told to trust the
// simulator's test roots appraises the answers.
func Example() {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		panic(err)
	}
	fleet, err := auth.NewFleet(3, sim.VMConfig{Platform: evidence.PlatformAzureSNP, AK: sim.AKECDSAP256})
	if err != nil {
		panic(err)
	}
	tdxVM, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256})
	if err != nil {
		panic(err)
	}
	fleet = append(fleet, tdxVM)
	fleet[1].SetFaults(sim.Faults{DebugPolicy: true})

	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		panic(err)
	}
	policy := auth.Policy()
	for i, vm := range fleet {
		nonce := evidence.NewNonce()     // the verifier issues a fresh nonce per challenge
		bundle, err := vm.Respond(nonce) // what the agent answers on vigil.agent.<vm>.challenge
		if err != nil {
			panic(err)
		}
		exp := evidence.Expect{Nonce: nonce, VMID: vm.VMID(), VMKey: vm.VMKey()}
		verdict, _, err := appraise.Evidence(context.Background(), v, bundle, exp, policy, appraise.Options{})
		if err != nil {
			panic(err)
		}
		line := fmt.Sprint(i, " ", vm.Platform(), " ", verdict.Status)
		if len(verdict.Reasons) > 0 {
			line += " " + verdict.Reasons[0].Code
		}
		fmt.Println(line)
	}
	// Output:
	// 0 azure-sev-snp affirming
	// 1 azure-sev-snp contraindicated policy.debug_enabled
	// 2 azure-sev-snp affirming
	// 3 azure-tdx affirming
}
