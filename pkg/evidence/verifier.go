package evidence

import (
	"bytes"
	"context"
	"crypto"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/google/go-sev-guest/verify/trust"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/evidence/internal/lru"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
)

// Default service endpoints.
const (
	DefaultKDSURL = "https://kdsintf.amd.com"
	DefaultPCSURL = "https://api.trustedservices.intel.com"
)

// Config configures a Verifier. The zero value verifies online with pinned
// roots and an in-memory collateral cache.
type Config struct {
	// Offline forbids every network fetch (AMD KDS, Intel PCS): VCEKs and
	// collateral then come only from the bundle and the collateral cache.
	Offline bool
	// Collateral caches VCEKs and Intel PCS responses; default in-memory.
	// Use collateral.OpenKV to share the vigil-collateral bucket.
	Collateral collateral.Cache
	// HTTPClient fetches from AMD KDS and Intel PCS; default has a 20 s
	// timeout. After a failed fetch, the same collateral is not fetched
	// again for a backoff window (5 s, doubling to 5 min, or what a
	// Retry-After asks): verifications needing it meanwhile are
	// Unavailable at once, with a *collateral.BackoffError.
	HTTPClient *http.Client
	// KDSURL and PCSURL override the AMD KDS and Intel PCS base URLs
	// (mirrors, tests).
	KDSURL, PCSURL string
	// TDXCollateral makes TDX verification obtain Intel PCS collateral (TCB
	// info, QE identity, PCK CRL), verify it and report Intel's TCB status.
	// Without it, TDX quotes are verified to Intel's root without TCB
	// status. Offline, collateral comes from the collateral cache only.
	TDXCollateral bool
	// SNPRevocation makes SEV-SNP verification obtain AMD's CRL of the
	// product line (AMD KDS {KDSURL}/vcek/v1/{product line}/crl, through
	// the collateral cache until its nextUpdate), verify it is signed by
	// the pinned ARK and current, and fail evidence whose ASK or VCEK it
	// revokes. Without it, AMD's CRLs are not consulted. Offline, the CRL
	// comes from the collateral cache only; a CRL that cannot be obtained
	// makes the result Unavailable (snp.crl_unavailable).
	SNPRevocation bool
	// TestRoots adds trust anchors for simulated evidence (see package
	// sim). Never set it for production evidence.
	TestRoots *TestRoots
	// Now is the clock for certificate validity, collateral expiry and
	// fetch backoff; default time.Now.
	Now func() time.Time
	// CacheSize bounds each cache of verified chains and parsed runtime
	// data (entries); default 4096.
	CacheSize int
	// Logger receives debug logs; default discards.
	Logger *slog.Logger
}

// Expect is what the caller knows and the evidence must match.
type Expect struct {
	// Nonce is the challenge nonce this verifier issued. The bundle's nonce
	// must equal it. When nil, freshness is not established.
	Nonce []byte
	// ExtraData is the TPM quote extraData the caller expects when the
	// quote answers another protocol than an attestation challenge (key
	// release binds an ephemeral key: see keyrelease.Binding). When nil,
	// Binding says what the quote must cover.
	ExtraData []byte
	// Binding says how the quote's extraData relates to the nonce (Nonce,
	// or without it the bundle's own) when ExtraData is nil. The zero value,
	// BindChallenge, is what Vigil's agent answers a challenge with.
	Binding QuoteBinding
	// VMID is the vmId ARM reports for the VM; validation (package
	// appraise) demands that the runtime data's vmUniqueId equal it.
	VMID string
	// VMKey is the VM key the caller attests; a bundle naming another VM
	// key fails validation.
	VMKey string
}

// QuoteBinding is how a TPM quote's extraData covers the nonce.
type QuoteBinding uint8

const (
	// BindChallenge: extraData is ChallengeBinding(nonce), the labelled
	// digest Vigil's agent quotes for an attestation challenge. The
	// attest-worker accepts nothing else.
	BindChallenge QuoteBinding = iota
	// BindRawNonce: extraData is the nonce itself, as evidence made by
	// other tools (and Azure's own samples) carries. Only for inspecting
	// such evidence: Vigil's services never accept it, since a quote over
	// raw caller-chosen bytes could answer any protocol.
	BindRawNonce
	// BindAny accepts either (vigil evidence verify's default);
	// Result.Binding says which one the quote has.
	BindAny
)

// String names the binding as the CLI and results do.
func (b QuoteBinding) String() string {
	switch b {
	case BindChallenge:
		return "challenge"
	case BindRawNonce:
		return "raw-nonce"
	case BindAny:
		return "any"
	}
	return "unknown"
}

// Verifier checks that evidence is genuine and fresh. It caches verified
// certificate chains and parsed runtime data, so steady-state verification
// costs little more than the signature checks. Safe for concurrent use.
type Verifier struct {
	cfg      Config
	roots    *trustStore
	coll     collateral.Cache
	now      func() time.Time
	log      *slog.Logger
	vceks    *lru.Bytes[*vcekEntry]
	pcks     *lru.Bytes[*pckEntry]
	runtimes *lru.Bytes[*runtimeEntry]
	tcbs     *lru.Cache[[32]byte, *tdxTCBEntry]
	amdCRLs  map[*trust.AMDRootCerts]*amdCRLSlot // fixed at construction
	fetch    *collateral.Fetcher
}

// NewVerifier returns a Verifier for cfg.
func NewVerifier(cfg Config) (*Verifier, error) {
	roots, err := newTrustStore(cfg.TestRoots)
	if err != nil {
		return nil, err
	}
	v := &Verifier{cfg: cfg, roots: roots, coll: cfg.Collateral, now: cfg.Now, log: cfg.Logger}
	if v.coll == nil {
		v.coll = collateral.NewMemory(0)
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 20 * time.Second}
	}
	if v.now == nil {
		v.now = time.Now
	}
	v.fetch = collateral.NewFetcher(client, v.now)
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	if v.cfg.KDSURL == "" {
		v.cfg.KDSURL = DefaultKDSURL
	}
	if v.cfg.PCSURL == "" {
		v.cfg.PCSURL = DefaultPCSURL
	}
	size := cfg.CacheSize
	if size <= 0 {
		size = 4096
	}
	v.vceks = lru.NewBytes[*vcekEntry](size)
	v.pcks = lru.NewBytes[*pckEntry](size)
	v.runtimes = lru.NewBytes[*runtimeEntry](size)
	v.tcbs = lru.New[[32]byte, *tdxTCBEntry](size)
	v.amdCRLs = newAMDCRLSlots(roots)
	return v, nil
}

// Now is the time on the verifier's clock (Config.Now).
func (v *Verifier) Now() time.Time { return v.now() }

// Result is the outcome of verification: whether every link of the chain
// holds, and the claims the evidence makes (trustworthy only when Genuine).
type Result struct {
	Platform string
	// Genuine is true when every link holds: hardware signature and chain,
	// report-data binding, TPM quote signature, nonce, PCR digest, event log.
	Genuine bool
	// Failures lists the broken links, the first being the primary one.
	Failures []events.Reason
	// Unavailable is true when the verifier could not decide because
	// collateral was missing (offline, KDS/PCS unreachable): retry later.
	Unavailable bool

	EvidenceDigest string
	Nonce          []byte
	// NonceChecked is true when the caller supplied the expected nonce.
	NonceChecked bool
	// Binding is the binding the quote was checked for: with BindAny the
	// one it has (BindAny when neither matched). Unset (BindChallenge)
	// when the caller gave Expect.ExtraData.
	Binding     QuoteBinding
	BundleVMKey string
	CollectedAt time.Time

	RuntimeData *hcl.RuntimeData
	VMUniqueID  string
	PCRBank     string
	PCRs        map[int][]byte
	SNP         *SNPClaims
	TDX         *TDXClaims
	EventLog    *EventLogClaims
	TCB         events.TCB
}

func (r *Result) fail(code, format string, args ...any) {
	r.Failures = append(r.Failures, events.Reason{Code: code, Message: fmt.Sprintf(format, args...)})
}

func (r *Result) unavailable(code, format string, args ...any) {
	r.Unavailable = true
	r.fail(code, format, args...)
}

// HasFailure reports whether code is among the failures.
func (r *Result) HasFailure(code string) bool {
	for _, f := range r.Failures {
		if f.Code == code {
			return true
		}
	}
	return false
}

// Verify parses raw as a bundle and verifies it. The error is non-nil only
// when raw is not a valid bundle (errors.Is(err, ErrInvalidBundle)).
func (v *Verifier) Verify(ctx context.Context, raw []byte, exp Expect) (res *Result, err error) {
	ctx, span := startSpan(ctx, "evidence.Verify")
	defer func() {
		traceVerify(span, res, err)
		span.End()
	}()
	b, err := ParseBundle(raw)
	if err != nil {
		return nil, err
	}
	res = v.VerifyBundle(ctx, b, exp)
	res.EvidenceDigest = Digest(raw)
	return res, nil
}

// VerifyBundle verifies a parsed bundle.
func (v *Verifier) VerifyBundle(ctx context.Context, b *Bundle, exp Expect) *Result {
	res := &Result{
		Platform:     b.Platform,
		Nonce:        b.Nonce,
		NonceChecked: exp.Nonce != nil,
		BundleVMKey:  b.VMKey,
		CollectedAt:  b.CollectedAt,
		PCRBank:      b.TPMQuote.PCRBank,
	}
	defer func() { res.Genuine = len(res.Failures) == 0 }()

	rep, err := hcl.Parse(b.HCLReport)
	if err != nil {
		res.fail(ReasonHCLMalformed, "%v", err)
		return res
	}
	want := hcl.ReportTypeSNP
	if b.Platform == PlatformAzureTDX {
		want = hcl.ReportTypeTDX
	}
	if rep.Type != want {
		res.fail(ReasonHCLReportTypeMismatch, "HCL report carries a %s report, platform %s needs %s", rep.Type, b.Platform, want)
		return res
	}

	// Link 1: the hardware report is genuine.
	var reportData []byte
	switch b.Platform {
	case PlatformAzureSNP:
		reportData = v.verifySNP(ctx, res, b, rep)
	case PlatformAzureTDX:
		reportData = v.verifyTDX(ctx, res, b, rep)
	}

	// Link 2: the hardware report binds the runtime data as stored.
	if reportData != nil {
		if err := rep.CheckBinding(reportData); err != nil {
			res.fail(ReasonBindingMismatch, "%v", err)
		}
	}

	// The attestation key comes from the runtime data, selected by kid.
	rt := v.runtimeData(rep.RuntimeData)
	switch {
	case rt.err != nil:
		res.fail(ReasonHCLRuntimeDataInvalid, "%v", rt.err)
	case rt.akErr != nil:
		res.fail(ReasonHCLAKMissing, "%v", rt.akErr)
	}
	if rt.data != nil {
		res.RuntimeData = rt.data
		res.VMUniqueID = rt.data.VMConfiguration.VMUniqueID
	}

	// Links 3-5: the TPM quote.
	v.verifyQuote(res, b, exp, rt.ak)

	if len(b.EventLog) > 0 && res.PCRs != nil {
		v.verifyEventLog(res, b)
	}
	return res
}

type runtimeEntry struct {
	data  *hcl.RuntimeData
	err   error
	ak    crypto.PublicKey
	akErr error
}

// runtimeData parses runtime data and its AK, cached by content digest
// (a VM's runtime data is fixed from boot).
func (v *Verifier) runtimeData(raw []byte) *runtimeEntry {
	if e, ok := v.runtimes.Get(raw); ok {
		return e
	}
	e := &runtimeEntry{}
	e.data, e.err = hcl.ParseRuntimeData(raw)
	if e.err == nil {
		e.ak, e.akErr = e.data.Key(hcl.KidAK)
	}
	v.runtimes.Add(raw, e)
	return e
}

func (v *Verifier) verifyQuote(res *Result, b *Bundle, exp Expect, ak crypto.PublicKey) {
	q, err := tpmquote.Parse(b.TPMQuote.Attest, b.TPMQuote.Signature)
	if err != nil {
		res.fail(ReasonTPMQuoteMalformed, "%v", err)
		return
	}
	if ak != nil {
		if err := q.VerifySignature(ak); err != nil {
			res.fail(ReasonTPMSignatureInvalid, "quote signature does not verify with %s: %v", hcl.KidAK, err)
		}
	}
	if exp.Nonce != nil && !bytes.Equal(b.Nonce, exp.Nonce) {
		res.fail(ReasonTPMNonceMismatch, "bundle nonce %x is not the issued nonce %x", b.Nonce, exp.Nonce)
	}
	if err := checkBinding(res, q, b, exp); err != nil {
		res.fail(ReasonTPMNonceMismatch, "%v", err)
	}
	bank, _, _ := PCRBankAlg(b.TPMQuote.PCRBank)
	if err := q.CheckPCRs(bank, b.TPMQuote.PCRs); err != nil {
		code := ReasonTPMPCRDigestMismatch
		if errors.Is(err, tpmquote.ErrPCRSelection) {
			code = ReasonTPMPCRSelection
		}
		res.fail(code, "%v", err)
		return
	}
	res.PCRs = b.TPMQuote.PCRs
}

// checkBinding checks the quote's extraData against what exp asks for and
// records in res which binding it has.
func checkBinding(res *Result, q *tpmquote.Quote, b *Bundle, exp Expect) error {
	if exp.ExtraData != nil {
		return q.CheckExtraData(exp.ExtraData)
	}
	nonce := exp.Nonce
	if nonce == nil {
		nonce = b.Nonce
	}
	switch exp.Binding {
	case BindChallenge:
		res.Binding = BindChallenge
		return q.CheckExtraData(ChallengeBinding(nonce))
	case BindRawNonce:
		res.Binding = BindRawNonce
		return q.CheckExtraData(nonce)
	case BindAny:
		if q.CheckExtraData(ChallengeBinding(nonce)) == nil {
			res.Binding = BindChallenge
			return nil
		}
		if err := q.CheckExtraData(nonce); err != nil {
			res.Binding = BindAny
			return fmt.Errorf("%w (neither the nonce nor its challenge binding)", err)
		}
		res.Binding = BindRawNonce
		return nil
	}
	return fmt.Errorf("evidence: unknown quote binding %d", exp.Binding)
}
