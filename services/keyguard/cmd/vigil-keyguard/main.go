// Command vigil-keyguard binds key release to attestation: it revokes a
// VM's key grants (local release service, Azure Key Vault) the moment the VM
// is untrusted, stale or deleted, and releases secrets only to VMs whose
// fresh evidence binds the release.
//
// Every flag has a VIGIL_* environment fallback (flag -foo-bar reads
// VIGIL_FOO_BAR).
package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

func main() { svcmain.Main("vigil-keyguard", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-keyguard", ":8084")
	masterKey := f.String("master-key-file", "", "file holding the 32-byte master key that encrypts secrets at rest (raw, hex or base64)")
	createKey := f.Bool("create-master-key", false, "generate the master key file when it does not exist yet (first start)")
	configFile := f.String("config", "", "YAML file with grants, Azure Key Vault backends and the restore policy")
	autoRestore := f.String("auto-restore", "", "revocation causes restored automatically once the VM is trusted again: stale, untrusted (comma separated)")
	policyFile := f.String("policy", "", "attestation policy (YAML) for release evidence; default: Vigil's default Azure CVM policy")
	testRoots := f.String("evidence-test-roots", "", "PEM file of simulated vendor roots to trust (simulated fleets only)")
	offline := f.Bool("evidence-offline", false, "never fetch from AMD KDS or Intel PCS")
	tdxColl := f.Bool("evidence-tdx-collateral", false, "verify TDX quotes against Intel PCS collateral (TCB status)")
	amdCRL := f.Bool("evidence-amd-crl", false, "check SEV-SNP ASKs and VCEKs against AMD's CRL (AMD KDS, cached until its nextUpdate)")
	nonceTTL := f.Duration("nonce-ttl", 2*time.Minute, "validity of a release nonce (at most 5m)")
	noncesPerVM := f.Int("nonces-per-vm", 8, "unused release nonces one VM may hold at once")
	reconcile := f.Duration("reconcile-interval", 30*time.Second, "how often every grant is checked against the attestation status")
	authDir := f.String("auth-dir", "", "identity directory made by `vigil auth init`: keyguard enrolls agents with the agents' signing key and revokes their credentials with the revoker's key and system-account credentials, the only files it reads there")
	enrollAddr := f.String("enroll-http", keyguard.DefaultEnrollAddr, "listen address of the agent enrollment API (with -auth-dir); agents reach it before they have bus credentials")
	agentTTL := f.Duration("agent-ttl", busauth.DefaultAgentTTL, "validity of an enrolled agent's credentials (agents renew at three quarters of it)")
	enrollRate := f.Float("enroll-rate", 2, "enrollment requests per second one source address may make, answered or refused (with -auth-dir)")
	enrollBurst := f.Int("enroll-burst", 20, "enrollment requests one source address may make in a row before -enroll-rate applies (with -auth-dir)")
	f.Check(func() error {
		if *masterKey == "" {
			return errors.New("-master-key-file is required")
		}
		if !(*enrollRate > 0) {
			return fmt.Errorf("-enroll-rate %v: must be positive", *enrollRate)
		}
		if *enrollBurst <= 0 {
			return fmt.Errorf("-enroll-burst %d: must be positive", *enrollBurst)
		}
		return nil
	})
	return func(ctx context.Context, rt svcmain.Runtime) error {
		if *createKey {
			if _, err := secrets.EnsureMasterKeyFile(*masterKey); err != nil {
				return fmt.Errorf("%w: -create-master-key: %w", svcmain.ErrUsage, err)
			}
		}
		cfg := keyguard.Config{
			Options:           options(rt),
			MasterKeyFile:     *masterKey,
			NonceTTL:          *nonceTTL,
			Nonces:            keyguard.NonceLimits{PerVM: *noncesPerVM},
			ReconcileInterval: *reconcile,
			Evidence: keyguard.EvidenceConfig{
				Verifier: evidence.Config{Offline: *offline, TDXCollateral: *tdxColl, SNPRevocation: *amdCRL},
				Build:    "vigil-keyguard",
			},
		}
		if *authDir != "" {
			iss, err := busauth.LoadAgentIssuer(*authDir)
			if err != nil {
				return fmt.Errorf("%w: -auth-dir: %w", svcmain.ErrUsage, err)
			}
			rev, err := busauth.LoadRevoker(*authDir)
			if err != nil {
				return fmt.Errorf("%w: -auth-dir: %w", svcmain.ErrUsage, err)
			}
			cfg.Enroll = keyguard.EnrollConfig{Issuer: iss, Addr: *enrollAddr, TTL: *agentTTL, Revoker: rev,
				SourceRate: *enrollRate, SourceBurst: *enrollBurst,
				RevokerNATS: bus.Config{URL: cfg.NATS.URL, TLSCAFile: cfg.NATS.TLSCAFile, TLSCertFile: cfg.NATS.TLSCertFile, TLSKeyFile: cfg.NATS.TLSKeyFile, WaitForServer: true}}
		}
		if *configFile != "" {
			file, err := keyguard.LoadFile(*configFile)
			if err != nil {
				return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
			}
			file.Apply(&cfg)
		}
		for _, c := range strings.Split(*autoRestore, ",") {
			if c = strings.TrimSpace(c); c != "" {
				cfg.Restore.Automatic = append(cfg.Restore.Automatic, c)
			}
		}
		if *policyFile != "" {
			b, err := svcmain.ReadFile("policy", *policyFile)
			if err != nil {
				return err
			}
			if cfg.Evidence.Policy, err = appraise.ParsePolicy(b); err != nil {
				return fmt.Errorf("%w: -policy %s: %w", svcmain.ErrUsage, *policyFile, err)
			}
		}
		if *testRoots != "" {
			b, err := svcmain.ReadFile("evidence-test-roots", *testRoots)
			if err != nil {
				return err
			}
			if cfg.Evidence.Verifier.TestRoots, err = evidence.ParseTestRootsPEM(b); err != nil {
				return fmt.Errorf("%w: -evidence-test-roots %s: %w", svcmain.ErrUsage, *testRoots, err)
			}
			rt.Logger.Warn("trusting simulated vendor roots: for simulated fleets only", "file", *testRoots)
		}
		err := keyguard.Run(ctx, cfg)
		if errors.Is(err, keyguard.ErrConfig) {
			return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
		}
		return err
	}
}
