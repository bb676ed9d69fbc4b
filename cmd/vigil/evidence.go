package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

func newEvidenceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "evidence",
		Short: "Verify, simulate and inspect attestation evidence (vigil.evidence/v1 bundles)",
	}
	cmd.AddCommand(newEvidenceVerifyCmd(), newEvidencePolicyCmd(), newEvidenceSimulateCmd())
	// Bad flags are bad usage: exit code 2.
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	return cmd
}

// usageError ends a command with exit code 2 (bad usage, unreadable input).
func usageError(format string, args ...any) error {
	return &exitError{code: 2, msg: fmt.Sprintf(format, args...)}
}

type verifyOptions struct {
	bundle     string
	nonce      string
	extraData  string
	binding    string
	vmID       string
	vmKey      string
	policy     string
	offline    bool
	kdsURL     string
	pcsURL     string
	tdxPCS     bool
	amdCRL     bool
	testRoots  string
	signKey    string
	signKeyID  string
	compact    bool
	timeoutSec int
}

func newEvidenceVerifyCmd() *cobra.Command {
	o := &verifyOptions{}
	cmd := &cobra.Command{
		Use:   "verify --bundle FILE [--nonce B64] [--vm-id GUID] [--policy FILE] [--offline]",
		Short: "Verify an evidence bundle and print the verdict",
		Long: `Verify an evidence bundle (is it genuine and fresh), validate it against a policy
(the default Azure CVM policy unless --policy is given) and print the verdict JSON.

Exit status: 0 when the evidence is genuine and the verdict affirming or warning,
1 when verification or policy fails (the reasons are printed to stderr),
2 for unreadable input or bad usage.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEvidenceVerify(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.bundle, "bundle", "", "evidence bundle file (- for stdin)")
	f.StringVar(&o.nonce, "nonce", "", "the nonce issued for this evidence (standard base64); without it freshness is not established")
	f.StringVar(&o.extraData, "extra-data", "", "expected TPM quote extraData when the quote answers another protocol than a challenge, e.g. a key release binding (standard base64)")
	f.StringVar(&o.binding, "quote-binding", "any", "how the quote's extraData covers the nonce: challenge (Vigil's agent: a labelled digest of the nonce), raw-nonce (other tools, Azure's samples) or any")
	f.StringVar(&o.vmID, "vm-id", "", "the vmId ARM reports for the VM; the runtime data's vmUniqueId must match")
	f.StringVar(&o.vmKey, "vm-key", "", "the VM key the evidence must be for")
	f.StringVar(&o.policy, "policy", "", "policy YAML file (default: the built-in Azure CVM policy)")
	f.BoolVar(&o.offline, "offline", false, "never contact AMD KDS or Intel PCS")
	f.StringVar(&o.kdsURL, "kds-url", "", "AMD KDS base URL (default "+evidence.DefaultKDSURL+")")
	f.StringVar(&o.pcsURL, "pcs-url", "", "Intel PCS base URL (default "+evidence.DefaultPCSURL+")")
	f.BoolVar(&o.tdxPCS, "tdx-collateral", false, "check TDX quotes against Intel PCS collateral (TCB status)")
	f.BoolVar(&o.amdCRL, "amd-crl", false, "check SEV-SNP ASK and VCEK against AMD's CRL from AMD KDS (with --offline: undecided, as nothing is cached)")
	f.StringVar(&o.testRoots, "test-roots", "", "PEM file of test roots to trust in addition to AMD's and Intel's (simulated evidence only)")
	f.StringVar(&o.signKey, "sign-key", "", "PEM EC P-256 private key to sign the verdict (ES256 JWS)")
	f.StringVar(&o.signKeyID, "sign-key-id", "", "key ID for the verdict JWS header")
	f.BoolVar(&o.compact, "compact", false, "print the verdict on one line")
	f.IntVar(&o.timeoutSec, "timeout", 60, "seconds to wait for AMD KDS / Intel PCS")
	return cmd
}

func readInput(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(io.LimitReader(cmd.InOrStdin(), evidence.MaxBundleSize+1))
	}
	return os.ReadFile(name)
}

func decodeFlagB64(name, v string) ([]byte, error) {
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, usageError("--%s is not standard base64: %v", name, err)
	}
	return b, nil
}

func runEvidenceVerify(cmd *cobra.Command, o *verifyOptions) error {
	if o.bundle == "" {
		return usageError("--bundle is required")
	}
	raw, err := readInput(cmd, o.bundle)
	if err != nil {
		return usageError("read bundle: %v", err)
	}
	var exp evidence.Expect
	if exp.Nonce, err = decodeFlagB64("nonce", o.nonce); err != nil {
		return err
	}
	if exp.ExtraData, err = decodeFlagB64("extra-data", o.extraData); err != nil {
		return err
	}
	switch o.binding {
	case evidence.BindChallenge.String():
		exp.Binding = evidence.BindChallenge
	case evidence.BindRawNonce.String():
		exp.Binding = evidence.BindRawNonce
	case evidence.BindAny.String():
		exp.Binding = evidence.BindAny
	default:
		return usageError("--quote-binding %q: want challenge, raw-nonce or any", o.binding)
	}
	exp.VMID, exp.VMKey = o.vmID, o.vmKey
	if o.vmKey != "" && !events.ValidVMKey(o.vmKey) {
		return usageError("--vm-key %q is not a VM key", o.vmKey)
	}
	pol := appraise.DefaultPolicy()
	if o.policy != "" {
		doc, err := os.ReadFile(o.policy)
		if err != nil {
			return usageError("read policy: %v", err)
		}
		if pol, err = appraise.ParsePolicy(doc); err != nil {
			return usageError("%v", err)
		}
	}
	cfg := evidence.Config{Offline: o.offline, KDSURL: o.kdsURL, PCSURL: o.pcsURL, TDXCollateral: o.tdxPCS, SNPRevocation: o.amdCRL}
	if o.testRoots != "" {
		pemRoots, err := os.ReadFile(o.testRoots)
		if err != nil {
			return usageError("read test roots: %v", err)
		}
		if cfg.TestRoots, err = evidence.ParseTestRootsPEM(pemRoots); err != nil {
			return usageError("%v", err)
		}
	}
	opts := appraise.Options{Build: "vigil " + version}
	if o.signKey != "" {
		key, err := readECKey(o.signKey)
		if err != nil {
			return usageError("%v", err)
		}
		opts.Signer = &appraise.VerdictSigner{Key: key, KeyID: o.signKeyID}
	}
	v, err := evidence.NewVerifier(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), time.Duration(o.timeoutSec)*time.Second)
	defer cancel()
	verdict, res, err := appraise.Evidence(ctx, v, raw, exp, pol, opts)
	if errors.Is(err, evidence.ErrInvalidBundle) {
		return usageError("%v", err)
	}
	if err != nil {
		return err
	}
	var out []byte
	if o.compact {
		out, err = json.Marshal(verdict)
	} else {
		out, err = json.MarshalIndent(verdict, "", "  ")
	}
	if err != nil {
		return err
	}
	fmt.Fprintln(cmd.OutOrStdout(), string(out))
	for _, r := range verdict.Reasons {
		fmt.Fprintf(cmd.ErrOrStderr(), "%s: %s\n", r.Code, r.Message)
	}
	if exp.ExtraData == nil && res.Genuine && res.Binding == evidence.BindRawNonce {
		fmt.Fprintln(cmd.ErrOrStderr(), "note: the quote covers the nonce as it is (evidence made by another tool); Vigil's services accept only quotes over its challenge binding")
	}
	ok := res.Genuine && (verdict.Status == events.VerdictAffirming || verdict.Status == events.VerdictWarning)
	if !ok {
		what := "policy"
		if !res.Genuine {
			what = "verification"
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s failed: verdict %s", what, verdict.Status)}
	}
	return nil
}

func readECKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("signing key %s is not PEM", path)
	}
	if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
		return k, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s is not an EC key", path)
	}
	return ek, nil
}

func newEvidencePolicyCmd() *cobra.Command {
	var check string
	cmd := &cobra.Command{
		Use:   "policy [--check FILE]",
		Short: "Print the default Azure CVM policy, or check a policy file",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if check == "" {
				fmt.Fprint(cmd.OutOrStdout(), appraise.DefaultPolicyYAML)
				return nil
			}
			doc, err := os.ReadFile(check)
			if err != nil {
				return usageError("read policy: %v", err)
			}
			p, err := appraise.ParsePolicy(doc)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			d, err := p.Digest()
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "policy %s version %d is valid (%s)\n", p.ID, p.Version, d)
			return nil
		},
	}
	cmd.Flags().StringVar(&check, "check", "", "policy YAML file to check")
	return cmd
}

type simulateOptions struct {
	platform  string
	product   string
	nonce     string
	vmID      string
	seed      string
	faults    string
	rootsOut  string
	policyOut string
	omitVCEK  bool
	eventLog  bool
	rawNonce  bool
}

func newEvidenceSimulateCmd() *cobra.Command {
	o := &simulateOptions{}
	cmd := &cobra.Command{
		Use:   "simulate --nonce B64 [--platform azure-sev-snp|azure-tdx] [--fault NAME,...]",
		Short: "Print the evidence bundle of a simulated VM (test roots only, never genuine hardware)",
		Long: `Print the evidence bundle a simulated Azure CVM answers a challenge with.
Simulated evidence verifies only with the simulator's test roots:
  vigil evidence simulate --nonce B64 --roots-out roots.pem > bundle.json
  vigil evidence verify --bundle bundle.json --nonce B64 --test-roots roots.pem --offline

Faults: ` + strings.Join(faultNames(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runEvidenceSimulate(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.platform, "platform", evidence.PlatformAzureSNP, "azure-sev-snp or azure-tdx")
	f.StringVar(&o.product, "product", "Milan", "SEV-SNP product line: Milan or Genoa")
	f.StringVar(&o.nonce, "nonce", "", "challenge nonce (standard base64)")
	f.StringVar(&o.vmID, "vm-id", "", "ARM vmId of the simulated VM (default random)")
	f.StringVar(&o.seed, "seed", sim.DefaultSeed, "simulator seed (determines the test roots)")
	f.StringVar(&o.faults, "fault", "", "comma-separated faults to inject")
	f.StringVar(&o.rootsOut, "roots-out", "", "write the simulator's test roots (PEM) to this file")
	f.StringVar(&o.policyOut, "policy-out", "", "write a policy with the simulator's reference values to this file")
	f.BoolVar(&o.omitVCEK, "omit-vcek", false, "leave the VCEK out of SNP bundles")
	f.BoolVar(&o.eventLog, "event-log", false, "include a TCG event log")
	f.BoolVar(&o.rawNonce, "raw-nonce", false, "quote the nonce as it is, as tools other than Vigil's agent do (without --nonce: a capture with no qualifying data)")
	return cmd
}

var faultSetters = map[string]func(*sim.Faults){
	"debug":             func(f *sim.Faults) { f.DebugPolicy = true },
	"low-tcb":           func(f *sim.Faults) { f.LowTCB = true },
	"wrong-measurement": func(f *sim.Faults) { f.WrongMeasurement = true },
	"unexpected-boot":   func(f *sim.Faults) { f.UnexpectedBoot = true },
	"wrong-vmid":        func(f *sim.Faults) { f.WrongVMID = true },
	"broken-binding":    func(f *sim.Faults) { f.BrokenBinding = true },
	"broken-signature":  func(f *sim.Faults) { f.BrokenSignature = true },
	"broken-quote":      func(f *sim.Faults) { f.BrokenQuote = true },
}

func faultNames() []string {
	names := make([]string, 0, len(faultSetters))
	for n := range faultSetters {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

func runEvidenceSimulate(cmd *cobra.Command, o *simulateOptions) error {
	nonce, err := decodeFlagB64("nonce", o.nonce)
	if err != nil {
		return err
	}
	if len(nonce) == 0 && !o.rawNonce {
		return usageError("--nonce is required (or --raw-nonce for a capture with no qualifying data)")
	}
	var faults sim.Faults
	for _, name := range strings.Split(o.faults, ",") {
		if name = strings.TrimSpace(name); name == "" {
			continue
		}
		set, ok := faultSetters[name]
		if !ok {
			return usageError("unknown fault %q (known: %s)", name, strings.Join(faultNames(), ", "))
		}
		set(&faults)
	}
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Seed: o.seed})
	if err != nil {
		return err
	}
	vm, err := auth.NewVM(sim.VMConfig{Platform: o.platform, ProductLine: o.product, VMID: o.vmID,
		OmitVCEK: o.omitVCEK, EventLog: o.eventLog, Faults: faults})
	if err != nil {
		return usageError("%v", err)
	}
	ch := sim.Challenge{Nonce: nonce}
	if o.rawNonce {
		ch.ExtraData = append([]byte{}, nonce...)
	}
	raw, err := vm.Answer(ch)
	if err != nil {
		return err
	}
	if o.rootsOut != "" {
		if err := os.WriteFile(o.rootsOut, auth.TrustRoots().MarshalPEM(), 0o644); err != nil {
			return err
		}
	}
	if o.policyOut != "" {
		doc, err := auth.Policy().Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.policyOut, doc, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintln(cmd.OutOrStdout(), string(raw))
	return nil
}
