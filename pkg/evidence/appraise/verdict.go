package appraise

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
)

// Options carry verdict metadata.
type Options struct {
	Now        time.Time // default time.Now
	Build      string    // verifier build, reported as verifier_build
	ResourceID string
	JobID      string
	Attempt    int
	// Signer, when set, signs the verdict (ES256 JWS in the jws field).
	Signer *VerdictSigner
}

// NewVerdictID returns a random verdict ID.
func NewVerdictID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// tier orders AR4SI values: 0 none, 1 affirming, 2 warning, 3 contraindicated.
func tier(v int8) int {
	switch {
	case v >= 96 || v <= -97:
		return 3
	case v >= 32 || v <= -33:
		return 2
	case v >= 2 || v <= -2:
		return 1
	}
	return 0
}

func claimPtr(tv *events.TrustVector, c Claim) *int8 {
	switch c {
	case ClaimInstanceIdentity:
		return &tv.InstanceIdentity
	case ClaimConfiguration:
		return &tv.Configuration
	case ClaimExecutables:
		return &tv.Executables
	case ClaimFileSystem:
		return &tv.FileSystem
	case ClaimHardware:
		return &tv.Hardware
	case ClaimRuntimeOpaque:
		return &tv.RuntimeOpaque
	case ClaimStorageOpaque:
		return &tv.StorageOpaque
	}
	return &tv.SourcedData
}

func allClaims(v int8) events.TrustVector {
	return events.TrustVector{InstanceIdentity: v, Configuration: v, Executables: v, FileSystem: v,
		Hardware: v, RuntimeOpaque: v, StorageOpaque: v, SourcedData: v}
}

// hasReferenceValues reports whether the policy pins what may run on platform.
func (p *Policy) hasReferenceValues(platform string) bool {
	if len(p.PCRs) > 0 {
		return true
	}
	if platform == evidence.PlatformAzureSNP {
		return len(p.SNP.Measurements) > 0
	}
	return len(p.TDX.MRTD) > 0 || len(p.TDX.MRSEAM) > 0
}

// Result appraises a verification Result (nil when the bundle could not
// be parsed; bundleErr then says why) against pol, turning it and the
// policy findings into an EAR-shaped verdict, signed when opt.Signer is
// set.
func Result(res *evidence.Result, bundleErr error, pol *Policy, exp evidence.Expect, opt Options) (events.Verdict, error) {
	now := opt.Now
	if now.IsZero() {
		now = time.Now()
	}
	v := events.Verdict{
		ID:            NewVerdictID(),
		VMKey:         exp.VMKey,
		VMID:          exp.VMID,
		ResourceID:    opt.ResourceID,
		VerifierBuild: opt.Build,
		JobID:         opt.JobID,
		Attempt:       opt.Attempt,
		IssuedAt:      now.UTC(),
	}
	if pol != nil {
		v.PolicyID, v.PolicyVersion = pol.ID, pol.Version
	}
	switch {
	case res == nil:
		v.Status = events.VerdictContraindicated
		v.TrustVector = allClaims(arCryptoFailure)
		msg := "no evidence"
		if bundleErr != nil {
			msg = bundleErr.Error()
		}
		v.Reasons = []events.Reason{{Code: evidence.ReasonBundleMalformed, Message: msg}}
	default:
		v.Platform = res.Platform
		v.EvidenceDigest = res.EvidenceDigest
		v.ClaimedVMID = res.VMUniqueID
		if len(res.Nonce) > 0 {
			v.Nonce = base64.StdEncoding.EncodeToString(res.Nonce)
		}
		v.Reasons = append(v.Reasons, res.Failures...)
		if res.SNP != nil || res.TDX != nil {
			tcb := res.TCB
			v.TCB = &tcb
		}
		switch {
		case !res.Genuine && res.Unavailable && !hasEvidenceFailure(res):
			v.Status = events.VerdictNone
			v.TrustVector = allClaims(arNone)
		case !res.Genuine:
			v.Status = events.VerdictContraindicated
			v.TrustVector = allClaims(arCryptoFailure)
		default:
			v.Status, v.TrustVector = appraiseGenuine(res, pol, exp, now, &v.Reasons)
		}
	}
	if opt.Signer != nil {
		if err := opt.Signer.Sign(&v); err != nil {
			return v, err
		}
	}
	return v, nil
}

func hasEvidenceFailure(res *evidence.Result) bool {
	for _, f := range res.Failures {
		switch f.Code {
		case evidence.ReasonSNPVCEKUnavailable, evidence.ReasonSNPCRLUnavailable, evidence.ReasonTDXCollateralUnavailable:
		default:
			return true
		}
	}
	return false
}

func appraiseGenuine(res *evidence.Result, pol *Policy, exp evidence.Expect, now time.Time, reasons *[]events.Reason) (string, events.TrustVector) {
	tv := events.TrustVector{
		InstanceIdentity: arAffirm,
		Configuration:    arAffirm,
		Hardware:         arAffirm,
		RuntimeOpaque:    arAffirm,
	}
	if c := res.RuntimeData; c != nil && c.VMConfiguration.TPMEnabled != nil && *c.VMConfiguration.TPMEnabled {
		tv.StorageOpaque = arAffirm
	}
	if pol == nil {
		return events.VerdictAffirming, tv
	}
	if pol.hasReferenceValues(res.Platform) {
		tv.Executables = arAffirmBoot
	}
	warning := false
	for _, f := range pol.Validate(res, exp, now) {
		*reasons = append(*reasons, f.Reason)
		if f.Warning {
			warning = true
		}
		p := claimPtr(&tv, f.Claim)
		if tier(f.Value) > tier(*p) {
			*p = f.Value
		}
	}
	worst := 0
	for _, c := range []Claim{ClaimInstanceIdentity, ClaimConfiguration, ClaimExecutables, ClaimFileSystem, ClaimHardware, ClaimRuntimeOpaque, ClaimStorageOpaque, ClaimSourcedData} {
		worst = max(worst, tier(*claimPtr(&tv, c)))
	}
	switch {
	case worst == 3:
		return events.VerdictContraindicated, tv
	case worst == 2 || warning:
		return events.VerdictWarning, tv
	}
	return events.VerdictAffirming, tv
}

// Evidence verifies raw with v, appraises the result against pol (see
// Result) and returns the verdict with the verification result. Without opt.Now the verdict is
// issued at the time of v's clock. err is non-nil when raw is not a valid
// bundle; the verdict then is contraindicated with reason bundle.malformed.
func Evidence(ctx context.Context, v *evidence.Verifier, raw []byte, exp evidence.Expect, pol *Policy, opt Options) (events.Verdict, *evidence.Result, error) {
	if opt.Now.IsZero() {
		opt.Now = v.Now()
	}
	res, err := v.Verify(ctx, raw, exp)
	verdict, serr := Result(res, err, pol, exp, opt)
	if err == nil {
		err = serr
	}
	return verdict, res, err
}
