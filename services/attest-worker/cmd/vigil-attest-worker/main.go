// Command vigil-attest-worker re-attests every running VM of the fleet on a
// schedule kept in JetStream: it challenges the VM's agent with a fresh
// nonce, verifies the evidence, applies the policy, and publishes the
// verdict and the VM's status. Run as many copies as the fleet needs; they
// share the work.
//
// Every flag has a VIGIL_* environment fallback (flag -foo-bar reads
// VIGIL_FOO_BAR).
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/svcmain"
	attestworker "github.com/vigil-cc/vigil/services/attest-worker"
)

func main() { svcmain.Main("vigil-attest-worker", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-attest-worker", ":8082")
	name := f.String("name", "", "this worker's name in logs and status records (default host-pid)")
	concurrency := f.Int("concurrency", 64, "jobs handled at once by this worker")
	policyFile := f.String("policy", "", "policy YAML (default: the built-in Azure CVM policy)")
	interval := f.Duration("interval", 0, "re-attestation interval (0: the policy's, 5m by default)")
	grace := f.Duration("grace", 0, "grace period before a VM without valid evidence is stale (0: the policy's)")
	jitter := f.Float("jitter", 0.1, "how far a due time may move toward the VM's slot, as a fraction of the interval")
	timeout := f.Duration("challenge-timeout", 10*time.Second, "bound on one challenge round trip")
	sweep := f.Duration("sweep-every", 0, "period of the missed-deadline sweep (0: the smaller of the interval and 1m)")
	onboarding := f.Duration("onboarding-limit", attestworker.DefaultOnboardingLimit, "how long a VM's first attestation waits for the vmId ARM reports before it is attested without it, and how long a VM that never gave valid evidence may go without it before it is stale (0: no wait, for ingest without ARM, and the grace period)")
	offline := f.Bool("offline", false, "never fetch from AMD KDS or Intel PCS (VCEKs from bundles and the collateral cache only)")
	tdxColl := f.Bool("tdx-collateral", false, "obtain Intel PCS collateral for TDX TCB status")
	amdCRL := f.Bool("amd-crl", false, "check SEV-SNP ASKs and VCEKs against AMD's CRL (AMD KDS, cached until its nextUpdate)")
	testRoots := f.String("test-roots", "", "PEM file of simulator trust roots (simulated fleets only; never in production)")
	f.Check(func() error {
		switch {
		case *concurrency < 1:
			return fmt.Errorf("-concurrency %d: must be at least 1", *concurrency)
		case *interval < 0 || *grace < 0 || *timeout <= 0 || *sweep < 0 || *onboarding < 0:
			return fmt.Errorf("durations must not be negative (and -challenge-timeout positive)")
		}
		return nil
	})
	return func(ctx context.Context, rt svcmain.Runtime) error {
		cfg := attestworker.Config{
			Options:          options(rt),
			Name:             *name,
			Concurrency:      *concurrency,
			Timing:           attestworker.Timing{Interval: *interval, Grace: *grace, Jitter: *jitter},
			ChallengeTimeout: *timeout,
			SweepEvery:       *sweep,
			OnboardingLimit:  *onboarding,
			Verifier:         evidence.Config{Offline: *offline, TDXCollateral: *tdxColl, SNPRevocation: *amdCRL},
		}
		if *onboarding == 0 {
			cfg.OnboardingLimit = -1 // no wait
		}
		if *policyFile != "" {
			doc, err := svcmain.ReadFile("policy", *policyFile)
			if err != nil {
				return err
			}
			if cfg.Policy, err = appraise.ParsePolicy(doc); err != nil {
				return fmt.Errorf("%w: %s: %w", svcmain.ErrUsage, *policyFile, err)
			}
		}
		if *testRoots != "" {
			pem, err := svcmain.ReadFile("test-roots", *testRoots)
			if err != nil {
				return err
			}
			if cfg.Verifier.TestRoots, err = evidence.ParseTestRootsPEM(pem); err != nil {
				return fmt.Errorf("%w: %s: %w", svcmain.ErrUsage, *testRoots, err)
			}
			rt.Logger.Warn("trusting simulator roots: evidence from simulated hardware is accepted", "file", *testRoots)
		}
		return attestworker.Run(ctx, cfg)
	}
}
