package attestworker

import (
	"context"
	"runtime/debug"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
)

// appraisal is one agent answer to appraise.
type appraisal struct {
	VMKey      string
	ResourceID string
	VMID       string // vmId ingest stored for the VM; the runtime data's vmUniqueId must equal it
	Bundle     []byte
	Nonce      []byte // the nonce this worker sent
}

// appraiser turns an agent's answer into a verdict. An error means the
// answer could not be appraised at all (not that it is bad: bad evidence is
// a contraindicated verdict).
type appraiser interface {
	appraise(ctx context.Context, in appraisal) (*events.Verdict, error)
}

// evidenceAppraiser verifies with pkg/evidence and applies the policy.
type evidenceAppraiser struct {
	v     *evidence.Verifier
	pol   func() *appraise.Policy // the policy in force
	build string
}

func newEvidenceAppraiser(cfg evidence.Config, pol func() *appraise.Policy) (*evidenceAppraiser, error) {
	v, err := evidence.NewVerifier(cfg)
	if err != nil {
		return nil, err
	}
	return &evidenceAppraiser{v: v, pol: pol, build: verifierBuild()}, nil
}

func (e *evidenceAppraiser) appraise(ctx context.Context, in appraisal) (*events.Verdict, error) {
	exp := evidence.Expect{Nonce: in.Nonce, VMID: in.VMID, VMKey: in.VMKey}
	// A bundle that does not parse is a contraindicated verdict
	// (bundle.malformed), not an error: the agent answered with garbage.
	v, _, _ := appraise.Evidence(ctx, e.v, in.Bundle, exp, e.pol(), appraise.Options{Build: e.build, ResourceID: in.ResourceID})
	return &v, nil
}

// policyTiming is the schedule a policy asks for.
func policyTiming(p *appraise.Policy) Timing {
	if p == nil {
		return Timing{}
	}
	return Timing{Interval: p.Schedule.ReattestInterval, Grace: p.Schedule.GracePeriod}
}

// verifierBuild names this build in verdicts.
func verifierBuild() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return Service
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v = s.Value[:12]
		}
	}
	return Service + " " + v
}
