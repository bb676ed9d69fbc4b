package evidence

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// AppraiseOptions carry verdict metadata.
type AppraiseOptions struct {
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
	if platform == PlatformAzureSNP {
		return len(p.SNP.Measurements) > 0
	}
	return len(p.TDX.MRTD) > 0 || len(p.TDX.MRSEAM) > 0
}

// Appraise turns a verification Result (nil when the bundle could not be
// parsed; bundleErr then says why) and the policy findings into an
// EAR-shaped verdict.
func Appraise(res *Result, bundleErr error, pol *Policy, exp Expect, opt AppraiseOptions) (events.Verdict, error) {
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
		v.Reasons = []events.Reason{{Code: ReasonBundleMalformed, Message: msg}}
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

func hasEvidenceFailure(res *Result) bool {
	for _, f := range res.Failures {
		switch f.Code {
		case ReasonSNPVCEKUnavailable, ReasonSNPCRLUnavailable, ReasonTDXCollateralUnavailable:
		default:
			return true
		}
	}
	return false
}

func appraiseGenuine(res *Result, pol *Policy, exp Expect, now time.Time, reasons *[]events.Reason) (string, events.TrustVector) {
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

// Attest verifies raw, validates it against pol and returns the verdict
// with the verification result. err is non-nil when raw is not a valid
// bundle; the verdict then is contraindicated with reason bundle.malformed.
func (v *Verifier) Attest(ctx context.Context, raw []byte, exp Expect, pol *Policy, opt AppraiseOptions) (events.Verdict, *Result, error) {
	if opt.Now.IsZero() {
		opt.Now = v.now()
	}
	res, err := v.Verify(ctx, raw, exp)
	verdict, serr := Appraise(res, err, pol, exp, opt)
	if err == nil {
		err = serr
	}
	return verdict, res, err
}

// VerdictSigner signs verdicts as ES256 compact JWS.
type VerdictSigner struct {
	Key   *ecdsa.PrivateKey // P-256
	KeyID string
}

type jwsHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
	Kid string `json:"kid,omitempty"`
}

const jwsType = "vigil-verdict+jws"

// Sign sets v.JWS to a compact JWS over the verdict without its jws field.
func (s *VerdictSigner) Sign(v *events.Verdict) error {
	if s.Key == nil || s.Key.Curve != elliptic.P256() {
		return errors.New("verdict signer: key must be ECDSA P-256")
	}
	c := *v
	c.JWS = ""
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	hdr, err := json.Marshal(jwsHeader{Alg: "ES256", Typ: jwsType, Kid: s.KeyID})
	if err != nil {
		return err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(hdr) + "." + enc.EncodeToString(payload)
	d := sha256.Sum256([]byte(input))
	r, ss, err := ecdsa.Sign(rand.Reader, s.Key, d[:])
	if err != nil {
		return err
	}
	sig := append(r.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	v.JWS = input + "." + enc.EncodeToString(sig)
	return nil
}

// VerifyVerdictJWS checks an ES256 compact JWS made by VerdictSigner and
// returns the verdict it carries (with JWS set to jws).
func VerifyVerdictJWS(jws string, pub *ecdsa.PublicKey) (events.Verdict, error) {
	var v events.Verdict
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return v, errors.New("verdict JWS: not three dot-separated parts")
	}
	enc := base64.RawURLEncoding
	hb, err := enc.DecodeString(parts[0])
	if err != nil {
		return v, fmt.Errorf("verdict JWS header: %w", err)
	}
	var h jwsHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return v, fmt.Errorf("verdict JWS header: %w", err)
	}
	if h.Alg != "ES256" {
		return v, fmt.Errorf("verdict JWS: alg %q, want ES256", h.Alg)
	}
	sig, err := enc.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return v, errors.New("verdict JWS: signature is not 64 bytes of base64url")
	}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return v, errors.New("verdict JWS: signature invalid")
	}
	payload, err := enc.DecodeString(parts[1])
	if err != nil {
		return v, fmt.Errorf("verdict JWS payload: %w", err)
	}
	if err := json.Unmarshal(payload, &v); err != nil {
		return v, fmt.Errorf("verdict JWS payload: %w", err)
	}
	v.JWS = jws
	return v, nil
}
