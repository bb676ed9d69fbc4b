package appraise

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
)

// Policy says what verified evidence is acceptable (docs/design.md
// §10.3). It is YAML, versioned, and validated against an evidence.Result
// to produce findings.
type Policy struct {
	ID          string         `yaml:"id" json:"id"`
	Version     int            `yaml:"version" json:"version"`
	Description string         `yaml:"description,omitempty" json:"description,omitempty"`
	Platforms   []string       `yaml:"platforms,omitempty" json:"platforms,omitempty"`
	SNP         SNPPolicy      `yaml:"snp" json:"snp"`
	TDX         TDXPolicy      `yaml:"tdx" json:"tdx"`
	PCRs        map[int][]Hex  `yaml:"pcrs,omitempty" json:"pcrs,omitempty"`
	Runtime     RuntimePolicy  `yaml:"runtime" json:"runtime"`
	Identity    IdentityPolicy `yaml:"identity" json:"identity"`
	Freshness   FreshPolicy    `yaml:"freshness" json:"freshness"`
	EventLog    EventLogPolicy `yaml:"event_log" json:"event_log"`
	Schedule    Schedule       `yaml:"schedule" json:"schedule"`
	// Warn lists reason codes that only warn instead of contraindicating.
	Warn []string `yaml:"warn,omitempty" json:"warn,omitempty"`
}

// SNPPolicy constrains SEV-SNP reports.
type SNPPolicy struct {
	AllowDebug          bool                       `yaml:"allow_debug" json:"allow_debug"`
	AllowMigrationAgent bool                       `yaml:"allow_migration_agent" json:"allow_migration_agent"`
	AllowSMT            bool                       `yaml:"allow_smt" json:"allow_smt"`
	VMPL                *uint32                    `yaml:"vmpl,omitempty" json:"vmpl,omitempty"` // required VMPL; nil: any
	Products            []string                   `yaml:"products,omitempty" json:"products,omitempty"`
	MinTCB              map[string]evidence.SNPTCB `yaml:"min_tcb,omitempty" json:"min_tcb,omitempty"` // by product line
	Measurements        []Hex                      `yaml:"measurements,omitempty" json:"measurements,omitempty"`
	MinGuestSVN         uint32                     `yaml:"min_guest_svn,omitempty" json:"min_guest_svn,omitempty"`
}

// TDXPolicy constrains TDX quotes.
type TDXPolicy struct {
	AllowDebug bool  `yaml:"allow_debug" json:"allow_debug"`
	MRSEAM     []Hex `yaml:"mr_seam,omitempty" json:"mr_seam,omitempty"`
	MRTD       []Hex `yaml:"mrtd,omitempty" json:"mrtd,omitempty"`
	// MinTEETCBSVN is compared component by component (16 bytes).
	MinTEETCBSVN Hex `yaml:"min_tee_tcb_svn,omitempty" json:"min_tee_tcb_svn,omitempty"`
	// TCBStatus classifies Intel's TCB status when collateral was checked.
	TCBStatus TCBStatusPolicy `yaml:"tcb_status" json:"tcb_status"`
	// RequireTCBStatus contraindicates evidence whose TCB status is unknown
	// (collateral not checked); the same as UnknownTCBStatus deny.
	RequireTCBStatus bool `yaml:"require_tcb_status,omitempty" json:"require_tcb_status,omitempty"`
	// UnknownTCBStatus says what an unknown TCB status (the verifier runs
	// without Intel PCS collateral) means: warn (the default policy) makes
	// the verdict a warning and deny contraindicates it, both with
	// policy.tcb_status_unknown; allow (or empty, as policies written
	// before it) passes silently.
	UnknownTCBStatus string `yaml:"unknown_tcb_status,omitempty" json:"unknown_tcb_status,omitempty"`
}

// TCBStatusPolicy lists accepted and warned TCB statuses; others contraindicate.
type TCBStatusPolicy struct {
	Accept []string `yaml:"accept" json:"accept"`
	Warn   []string `yaml:"warn,omitempty" json:"warn,omitempty"`
}

// Requirement modes for runtime settings.
const (
	Allow = "allow"
	Warn  = "warn"
	Deny  = "deny"
)

// RuntimePolicy constrains the HCL runtime data's vm-configuration.
type RuntimePolicy struct {
	RequireSecureBoot bool   `yaml:"require_secure_boot" json:"require_secure_boot"`
	RequireTPM        bool   `yaml:"require_tpm" json:"require_tpm"`
	Console           string `yaml:"console" json:"console"` // allow, warn, deny
}

// IdentityPolicy constrains who the evidence is from.
type IdentityPolicy struct {
	// CheckVMID demands vmUniqueId == the vmId ARM reports, when the caller knows it.
	CheckVMID bool `yaml:"check_vm_id" json:"check_vm_id"`
	// UnknownVMID says what it means when CheckVMID is on and the caller
	// knows no vmId for the VM, so the check cannot be made: allow (or
	// empty) passes silently, warn makes the verdict a warning and deny
	// contraindicates it, both with identity.vmid_unknown.
	UnknownVMID string `yaml:"unknown_vm_id,omitempty" json:"unknown_vm_id,omitempty"`
}

// FreshPolicy constrains freshness.
type FreshPolicy struct {
	// RequireNonce warns when no nonce was issued for the evidence.
	RequireNonce bool `yaml:"require_nonce" json:"require_nonce"`
	// MaxEvidenceAge bounds now - collected_at when the bundle has it.
	MaxEvidenceAge time.Duration `yaml:"max_evidence_age,omitempty" json:"max_evidence_age,omitempty"`
	MaxClockSkew   time.Duration `yaml:"max_clock_skew,omitempty" json:"max_clock_skew,omitempty"`
}

// EventLogPolicy constrains the TCG event log.
type EventLogPolicy struct {
	Require           bool `yaml:"require" json:"require"`
	RequireSecureBoot bool `yaml:"require_secure_boot" json:"require_secure_boot"`
}

// Schedule is how often a VM is re-attested and how long it may go
// without valid evidence before it is stale (used by the attest-worker).
type Schedule struct {
	ReattestInterval time.Duration `yaml:"reattest_interval" json:"reattest_interval"`
	GracePeriod      time.Duration `yaml:"grace_period" json:"grace_period"`
}

// Hex is a byte string written as hex in YAML and JSON.
type Hex []byte

// MarshalYAML implements yaml.Marshaler.
func (h Hex) MarshalYAML() (any, error) { return hex.EncodeToString(h), nil }

// UnmarshalYAML implements yaml.Unmarshaler.
func (h *Hex) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return err
	}
	b, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(s), "0x"))
	if err != nil {
		return fmt.Errorf("line %d: %q is not hex", n.Line, s)
	}
	*h = b
	return nil
}

// MarshalText implements encoding.TextMarshaler (JSON).
func (h Hex) MarshalText() ([]byte, error) { return []byte(hex.EncodeToString(h)), nil }

// DefaultPolicyYAML is the default policy for Azure Confidential VMs:
// genuine hardware, no debug, no migration agent, VMPL 0, secure boot and
// vTPM on, the serial console allowed, vmUniqueId checked against the vmId
// (a warning when the vmId is not known), an issued nonce expected. It pins no measurements: Azure's
// paravisor measurements change with Azure updates, so add them per fleet.
const DefaultPolicyYAML = `id: azure-cvm-default
version: 1
description: Default policy for Azure Confidential VMs (SEV-SNP and TDX with vTPM)
platforms: [azure-sev-snp, azure-tdx]
snp:
  allow_debug: false
  allow_migration_agent: false
  allow_smt: true
  vmpl: 0
  products: [Milan, Genoa, Turin]
tdx:
  allow_debug: false
  tcb_status:
    accept: [UpToDate]
    warn: [SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded]
  unknown_tcb_status: warn
runtime:
  require_secure_boot: true
  require_tpm: true
  console: allow
identity:
  check_vm_id: true
  unknown_vm_id: warn
freshness:
  require_nonce: true
  max_evidence_age: 10m
  max_clock_skew: 2m
event_log:
  require: false
  require_secure_boot: false
schedule:
  reattest_interval: 5m
  grace_period: 15m
`

// DefaultPolicy returns a fresh copy of the default Azure CVM policy.
func DefaultPolicy() *Policy {
	p, err := ParsePolicy([]byte(DefaultPolicyYAML))
	if err != nil {
		panic("appraise: default policy: " + err.Error())
	}
	return p
}

// ParsePolicy parses a YAML policy strictly (unknown fields are errors)
// and checks it for consistency.
func ParsePolicy(doc []byte) (*Policy, error) {
	if len(doc) > 1<<20 {
		return nil, errors.New("policy: document exceeds 1 MiB")
	}
	var p Policy
	dec := yaml.NewDecoder(bytes.NewReader(doc))
	dec.KnownFields(true)
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return &p, nil
}

// Check reports inconsistencies in a policy.
func (p *Policy) Check() error {
	if p.ID == "" {
		return errors.New("policy: id is missing")
	}
	if p.Version < 1 {
		return errors.New("policy: version must be >= 1")
	}
	for _, pl := range p.Platforms {
		if pl != evidence.PlatformAzureSNP && pl != evidence.PlatformAzureTDX {
			return fmt.Errorf("policy: platform %q is unknown", pl)
		}
	}
	for _, pr := range p.SNP.Products {
		if !slices.Contains(evidence.AMDProductLines(), pr) {
			return fmt.Errorf("policy: snp.products: %q is not Milan, Genoa or Turin", pr)
		}
	}
	for pr := range p.SNP.MinTCB {
		if !slices.Contains(evidence.AMDProductLines(), pr) {
			return fmt.Errorf("policy: snp.min_tcb: %q is not Milan, Genoa or Turin", pr)
		}
	}
	for _, m := range p.SNP.Measurements {
		if len(m) != 48 {
			return fmt.Errorf("policy: snp.measurements: %d bytes, want 48", len(m))
		}
	}
	for name, list := range map[string][]Hex{"tdx.mr_seam": p.TDX.MRSEAM, "tdx.mrtd": p.TDX.MRTD} {
		for _, m := range list {
			if len(m) != 48 {
				return fmt.Errorf("policy: %s: %d bytes, want 48", name, len(m))
			}
		}
	}
	if n := len(p.TDX.MinTEETCBSVN); n != 0 && n != 16 {
		return fmt.Errorf("policy: tdx.min_tee_tcb_svn: %d bytes, want 16", n)
	}
	for i, vals := range p.PCRs {
		if i < 0 || i > 23 {
			return fmt.Errorf("policy: pcrs: index %d out of range", i)
		}
		if len(vals) == 0 {
			return fmt.Errorf("policy: pcrs.%d: no allowed values", i)
		}
		for _, v := range vals {
			if len(v) != 32 {
				return fmt.Errorf("policy: pcrs.%d: %d bytes, want 32 (sha256 bank)", i, len(v))
			}
		}
	}
	switch p.Runtime.Console {
	case "", Allow, Warn, Deny:
	default:
		return fmt.Errorf("policy: runtime.console %q is not allow, warn or deny", p.Runtime.Console)
	}
	switch p.Identity.UnknownVMID {
	case "", Allow, Warn, Deny:
	default:
		return fmt.Errorf("policy: identity.unknown_vm_id %q is not allow, warn or deny", p.Identity.UnknownVMID)
	}
	switch p.TDX.UnknownTCBStatus {
	case "", Allow, Warn, Deny:
	default:
		return fmt.Errorf("policy: tdx.unknown_tcb_status %q is not allow, warn or deny", p.TDX.UnknownTCBStatus)
	}
	if p.Freshness.MaxEvidenceAge < 0 || p.Freshness.MaxClockSkew < 0 {
		return errors.New("policy: freshness durations must not be negative")
	}
	if p.Schedule.ReattestInterval < 0 || p.Schedule.GracePeriod < 0 {
		return errors.New("policy: schedule durations must not be negative")
	}
	return nil
}

// Marshal encodes the policy as YAML.
func (p *Policy) Marshal() ([]byte, error) { return yaml.Marshal(p) }

// Digest is "sha256:<hex>" of the policy's YAML encoding.
func (p *Policy) Digest() (string, error) {
	b, err := p.Marshal()
	if err != nil {
		return "", err
	}
	d := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(d[:]), nil
}

// Claim is a trustworthiness claim of an EAR trust vector.
type Claim int

// Trustworthiness claims.
const (
	ClaimInstanceIdentity Claim = iota
	ClaimConfiguration
	ClaimExecutables
	ClaimFileSystem
	ClaimHardware
	ClaimRuntimeOpaque
	ClaimStorageOpaque
	ClaimSourcedData
)

// Finding is one policy violation.
type Finding struct {
	events.Reason
	Claim Claim
	// Warning is true when the finding only warns.
	Warning bool
	// Value is the AR4SI value the finding gives its claim.
	Value int8
}

type findings struct {
	p   *Policy
	out []Finding
}

// add records a violation; deny and warn are the AR4SI values for the
// contraindicated and warning cases of the claim.
func (f *findings) add(claim Claim, warn bool, deny, warnValue int8, code, format string, args ...any) {
	warn = warn || slices.Contains(f.p.Warn, code)
	v := deny
	if warn {
		v = warnValue
	}
	f.out = append(f.out, Finding{
		Reason: events.Reason{Code: code, Message: fmt.Sprintf(format, args...)},
		Claim:  claim, Warning: warn, Value: v,
	})
}

// AR4SI values used.
const (
	arNone          int8 = 0
	arMalfunction   int8 = -1
	arAffirm        int8 = 2
	arAffirmBoot    int8 = 3
	arWarn          int8 = 32
	arWarnUnrecog   int8 = 33
	arContra        int8 = 96
	arUnrecognized  int8 = 97
	arCryptoFailure int8 = 99
)

func hexIn(list []Hex, v []byte) bool {
	for _, h := range list {
		if bytes.Equal(h, v) {
			return true
		}
	}
	return false
}

// Validate checks a genuine Result against the policy and what the caller
// expects. It returns nothing for a Result that is not genuine: such
// evidence is contraindicated by verification already.
func (p *Policy) Validate(res *evidence.Result, exp evidence.Expect, now time.Time) []Finding {
	if res == nil || !res.Genuine {
		return nil
	}
	f := &findings{p: p}
	if len(p.Platforms) > 0 && !slices.Contains(p.Platforms, res.Platform) {
		f.add(ClaimHardware, false, arUnrecognized, arWarn, ReasonPolicyPlatform, "platform %s is not allowed", res.Platform)
	}
	if s := res.SNP; s != nil {
		p.validateSNP(f, s)
	}
	if t := res.TDX; t != nil {
		p.validateTDX(f, t)
	}
	p.validateRuntime(f, res)
	for i, allowed := range p.PCRs {
		got, ok := res.PCRs[i]
		if res.PCRBank != "sha256" || !ok {
			f.add(ClaimExecutables, false, arContra, arWarnUnrecog, ReasonPolicyPCR, "PCR %d (sha256) is not in the quote", i)
			continue
		}
		if !hexIn(allowed, got) {
			f.add(ClaimExecutables, false, arContra, arWarnUnrecog, ReasonPolicyPCR, "PCR %d is %x, not an allowed value", i, got)
		}
	}
	if p.EventLog.Require && res.EventLog == nil {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicyEventLog, "policy requires an event log and the bundle has none")
	}
	if p.EventLog.RequireSecureBoot && res.EventLog != nil && !res.EventLog.SecureBoot {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicySecureBoot, "the event log shows secure boot disabled")
	}
	// Identity.
	if p.Identity.CheckVMID {
		switch {
		case exp.VMID == "":
			if m := p.Identity.UnknownVMID; m == Warn || m == Deny {
				f.add(ClaimInstanceIdentity, m == Warn, arContra, arWarn, ReasonIdentityVMIDUnknown,
					"no vmId is known for this VM, so vmUniqueId %q was not checked against the VM Azure Resource Manager reports", res.VMUniqueID)
			}
		case res.VMUniqueID == "":
			f.add(ClaimInstanceIdentity, false, arContra, arWarn, ReasonIdentityVMIDMissing, "runtime data carries no vmUniqueId, expected %s", exp.VMID)
		case !strings.EqualFold(res.VMUniqueID, exp.VMID):
			f.add(ClaimInstanceIdentity, false, arContra, arWarn, ReasonIdentityVMIDMismatch, "vmUniqueId %s is not the expected vmId %s", res.VMUniqueID, exp.VMID)
		}
	}
	if exp.VMKey != "" && res.BundleVMKey != "" && res.BundleVMKey != exp.VMKey {
		f.add(ClaimInstanceIdentity, false, arContra, arWarn, ReasonIdentityVMKeyMismatch, "bundle is for VM key %s, expected %s", res.BundleVMKey, exp.VMKey)
	}
	// Freshness.
	if p.Freshness.RequireNonce && !res.NonceChecked {
		f.add(ClaimInstanceIdentity, true, arContra, arWarn, ReasonFreshnessNonceUnchecked, "no issued nonce was given: the quote's freshness is not established")
	}
	if !res.CollectedAt.IsZero() {
		if age := now.Sub(res.CollectedAt); p.Freshness.MaxEvidenceAge > 0 && age > p.Freshness.MaxEvidenceAge {
			f.add(ClaimInstanceIdentity, false, arContra, arWarn, ReasonPolicyEvidenceAge, "evidence collected %s ago, more than %s", age.Round(time.Second), p.Freshness.MaxEvidenceAge)
		}
		if skew := res.CollectedAt.Sub(now); p.Freshness.MaxClockSkew > 0 && skew > p.Freshness.MaxClockSkew {
			f.add(ClaimInstanceIdentity, false, arContra, arWarn, ReasonPolicyEvidenceFuture, "evidence collected %s in the future", skew.Round(time.Second))
		}
	}
	return f.out
}

func (p *Policy) validateSNP(f *findings, s *evidence.SNPClaims) {
	sp := &p.SNP
	if len(sp.Products) > 0 && !slices.Contains(sp.Products, s.ProductLine) {
		f.add(ClaimHardware, false, arUnrecognized, arWarn, ReasonPolicyProduct, "product line %s is not allowed", s.ProductLine)
	}
	if s.Debug && !sp.AllowDebug {
		f.add(ClaimRuntimeOpaque, false, arContra, arWarn, ReasonPolicyDebug, "SNP guest policy 0x%x allows debugging", s.Policy)
	}
	if s.MigrationAgent && !sp.AllowMigrationAgent {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicyMigrationAgent, "SNP guest policy 0x%x allows a migration agent", s.Policy)
	}
	if s.SMT && !sp.AllowSMT {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicySMT, "SNP guest policy 0x%x allows SMT", s.Policy)
	}
	if sp.VMPL != nil && s.VMPL != *sp.VMPL {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicyVMPL, "report from VMPL %d, policy requires %d", s.VMPL, *sp.VMPL)
	}
	if min, ok := sp.MinTCB[s.ProductLine]; ok && !s.TCB.AtLeast(min) {
		f.add(ClaimHardware, false, arContra, arWarn, ReasonPolicyTCB, "reported TCB %+v is below the minimum %+v", s.TCB, min)
	}
	if s.GuestSVN < sp.MinGuestSVN {
		f.add(ClaimExecutables, false, arContra, arWarn, ReasonPolicyTCB, "guest SVN %d is below %d", s.GuestSVN, sp.MinGuestSVN)
	}
	if len(sp.Measurements) > 0 && !hexIn(sp.Measurements, s.Measurement) {
		f.add(ClaimExecutables, false, arContra, arWarnUnrecog, ReasonPolicyMeasurement, "measurement %x is not allowed", s.Measurement)
	}
}

func (p *Policy) validateTDX(f *findings, t *evidence.TDXClaims) {
	tp := &p.TDX
	if t.Debug && !tp.AllowDebug {
		f.add(ClaimRuntimeOpaque, false, arContra, arWarn, ReasonPolicyDebug, "TD attributes %x allow debugging", t.TDAttributes)
	}
	if len(tp.MRSEAM) > 0 && !hexIn(tp.MRSEAM, t.MRSEAM) {
		f.add(ClaimExecutables, false, arContra, arWarnUnrecog, ReasonPolicyMRSEAM, "MRSEAM %x is not allowed", t.MRSEAM)
	}
	if len(tp.MRTD) > 0 && !hexIn(tp.MRTD, t.MRTD) {
		f.add(ClaimExecutables, false, arContra, arWarnUnrecog, ReasonPolicyMeasurement, "MRTD %x is not allowed", t.MRTD)
	}
	if len(tp.MinTEETCBSVN) == 16 {
		for i, c := range tp.MinTEETCBSVN {
			if t.TEETCBSVN[i] < c {
				f.add(ClaimHardware, false, arContra, arWarn, ReasonPolicyTCB, "TEE TCB SVN %x is below the minimum %x", t.TEETCBSVN, []byte(tp.MinTEETCBSVN))
				break
			}
		}
	}
	switch {
	case t.TCBStatus == "":
		if m := tp.UnknownTCBStatus; tp.RequireTCBStatus || m == Warn || m == Deny {
			f.add(ClaimHardware, m == Warn && !tp.RequireTCBStatus, arContra, arWarn, ReasonPolicyTCBUnknown,
				"Intel TCB status unknown: the verifier did not check Intel PCS collateral (TCB info, QE identity, PCK CRL), so out-of-date or revoked platforms are not detected")
		}
	case slices.Contains(tp.TCBStatus.Accept, t.TCBStatus):
	case slices.Contains(tp.TCBStatus.Warn, t.TCBStatus):
		f.add(ClaimHardware, true, arContra, arWarn, ReasonPolicyTCBStatus, "Intel TCB status %s (advisories %s)", t.TCBStatus, strings.Join(t.AdvisoryIDs, ","))
	default:
		f.add(ClaimHardware, false, arContra, arWarn, ReasonPolicyTCBStatus, "Intel TCB status %s (advisories %s)", t.TCBStatus, strings.Join(t.AdvisoryIDs, ","))
	}
}

func (p *Policy) validateRuntime(f *findings, res *evidence.Result) {
	if res.RuntimeData == nil {
		return
	}
	c := res.RuntimeData.VMConfiguration
	if p.Runtime.RequireSecureBoot && (c.SecureBoot == nil || !*c.SecureBoot) {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicySecureBoot, "runtime data says secure-boot is %s", boolText(c.SecureBoot))
	}
	if p.Runtime.RequireTPM && (c.TPMEnabled == nil || !*c.TPMEnabled) {
		f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicyTPMDisabled, "runtime data says tpm-enabled is %s", boolText(c.TPMEnabled))
	}
	if c.ConsoleEnabled != nil && *c.ConsoleEnabled {
		switch p.Runtime.Console {
		case Warn:
			f.add(ClaimConfiguration, true, arContra, arWarn, ReasonPolicyConsole, "the serial console is enabled")
		case Deny:
			f.add(ClaimConfiguration, false, arContra, arWarn, ReasonPolicyConsole, "the serial console is enabled")
		}
	}
}

func boolText(b *bool) string {
	if b == nil {
		return "absent"
	}
	return strconv.FormatBool(*b)
}
