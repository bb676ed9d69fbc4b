package sim

import (
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
)

// Policy returns a policy that healthy simulated VMs satisfy and every
// fault violates: the default Azure policy plus the simulator's reference
// values (SNP measurement and minimum TCB, TDX MRTD, MRSEAM and minimum TEE
// TCB SVN, PCR 4 and PCR 7 of the simulated boot).
func (a *Authority) Policy() *appraise.Policy {
	p := appraise.DefaultPolicy()
	p.ID = "vigil-sim"
	p.Description = "Policy for simulated VMs of the vigil simulator"
	p.SNP.Products = append([]string(nil), ProductLines...)
	p.SNP.MinTCB = make(map[string]evidence.SNPTCB)
	for _, pl := range ProductLines {
		p.SNP.MinTCB[pl] = amdProducts[pl].goodTCB
	}
	p.SNP.Measurements = []appraise.Hex{simMeasurement(evidence.PlatformAzureSNP, false)}
	p.TDX.MRTD = []appraise.Hex{simMeasurement(evidence.PlatformAzureTDX, false)}
	p.TDX.MRSEAM = []appraise.Hex{simMRSEAM()}
	p.TDX.MinTEETCBSVN = append(appraise.Hex(nil), goodTEETCBSVN...)
	// The simulated fleet's TCB floor is the pinned TEE TCB SVN: a verifier
	// of it (vigil dev, tests) runs without Intel PCS collateral unless it
	// points at the simulated PCS, and an unknown TCB status is expected.
	p.TDX.UnknownTCBStatus = appraise.Allow
	golden := goldenPCRs()
	p.PCRs = map[int][]appraise.Hex{4: {golden[4]}, 7: {golden[7]}}
	return p
}
