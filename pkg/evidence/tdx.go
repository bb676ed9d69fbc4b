package evidence

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/big"
	"sync/atomic"
	"time"

	tdxabi "github.com/google/go-tdx-guest/abi"
	"github.com/google/go-tdx-guest/pcs"
	tdxverify "github.com/google/go-tdx-guest/verify"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/evidence/tdx"
)

// TD attribute bits.
const (
	tdAttrDebug         = 1 << 0
	tdAttrSEPTVEDisable = 1 << 28
)

// TDXClaims are the fields of a verified TDX quote.
type TDXClaims struct {
	TEETCBSVN      []byte    `json:"tee_tcb_svn"`
	MRSEAM         []byte    `json:"mr_seam"`
	MRSignerSEAM   []byte    `json:"mr_signer_seam"`
	SEAMAttributes []byte    `json:"seam_attributes"`
	TDAttributes   []byte    `json:"td_attributes"`
	XFAM           []byte    `json:"xfam"`
	MRTD           []byte    `json:"mr_td"`
	MRConfigID     []byte    `json:"mr_config_id"`
	MROwner        []byte    `json:"mr_owner"`
	MROwnerConfig  []byte    `json:"mr_owner_config"`
	RTMR           [4][]byte `json:"rtmr"`
	ReportData     []byte    `json:"report_data"`
	Debug          bool      `json:"debug"`
	SEPTVEDisable  bool      `json:"sept_ve_disable"`
	FMSPC          string    `json:"fmspc"`
	PCESVN         uint16    `json:"pce_svn"`
	QESVN          uint32    `json:"qe_svn"`
	// TCBStatus is Intel's TCB status for the platform, from PCS
	// collateral; empty when collateral was not checked.
	TCBStatus   string   `json:"tcb_status,omitempty"`
	AdvisoryIDs []string `json:"advisory_ids,omitempty"`
}

// pckEntry is a PCK chain verified to a trusted Intel root.
type pckEntry struct {
	chain      *tdx.Chain
	pub        *ecdsa.PublicKey
	ext        *pcs.PckExtensions
	notBefore  time.Time
	notAfter   time.Time
	roots      *x509.CertPool
	err        error
	crossCheck atomic.Bool
}

var pckNames = [3]string{"Intel SGX PCK Certificate", "Intel SGX PCK Platform CA", "Intel SGX Root CA"}

func (v *Verifier) pckChain(raw []byte) *pckEntry {
	if e, ok := v.pcks.Get(raw); ok {
		return e
	}
	e := v.newPCKEntry(raw)
	v.pcks.Add(raw, e)
	return e
}

func (v *Verifier) newPCKEntry(raw []byte) *pckEntry {
	e := &pckEntry{}
	c, err := tdx.ParsePCKChain(raw)
	if err != nil {
		e.err = err
		return e
	}
	e.chain = c
	root := v.roots.intelRoot(c.Root)
	if root == nil {
		e.err = fmt.Errorf("root %q is not a trusted Intel root", c.Root.Subject.CommonName)
		return e
	}
	for i, cert := range []*x509.Certificate{c.PCK, c.Intermediate, c.Root} {
		if cert.Subject.CommonName != pckNames[i] {
			e.err = fmt.Errorf("certificate %d subject %q, want %q", i, cert.Subject.CommonName, pckNames[i])
			return e
		}
		if cert.SignatureAlgorithm != x509.ECDSAWithSHA256 || cert.PublicKeyAlgorithm != x509.ECDSA {
			e.err = fmt.Errorf("certificate %q is not ECDSA-SHA256", cert.Subject.CommonName)
			return e
		}
	}
	pub, ok := c.PCK.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		e.err = fmt.Errorf("PCK key is not ECDSA P-256")
		return e
	}
	e.pub = pub
	e.roots = x509.NewCertPool()
	e.roots.AddCert(root)
	inter := x509.NewCertPool()
	inter.AddCert(c.Intermediate)
	if _, err := c.PCK.Verify(x509.VerifyOptions{
		Roots: e.roots, Intermediates: inter, CurrentTime: v.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		e.err = fmt.Errorf("PCK chain: %w", err)
		return e
	}
	if e.ext, err = pcs.PckCertificateExtensions(c.PCK); err != nil {
		e.err = fmt.Errorf("PCK extensions: %w", err)
		return e
	}
	e.notBefore, e.notAfter = c.PCK.NotBefore, c.PCK.NotAfter
	for _, cert := range []*x509.Certificate{c.Intermediate, root} {
		if cert.NotBefore.After(e.notBefore) {
			e.notBefore = cert.NotBefore
		}
		if cert.NotAfter.Before(e.notAfter) {
			e.notAfter = cert.NotAfter
		}
	}
	return e
}

func verifyRS(pub *ecdsa.PublicKey, digest, rs []byte) bool {
	half := len(rs) / 2
	return ecdsa.Verify(pub, digest, new(big.Int).SetBytes(rs[:half]), new(big.Int).SetBytes(rs[half:]))
}

func (v *Verifier) verifyTDX(ctx context.Context, res *Result, b *Bundle, rep *hcl.Report) []byte {
	q, err := tdx.ParseQuote(b.TDQuote)
	if err != nil {
		res.fail(ReasonTDXQuoteMalformed, "%v", err)
		return nil
	}
	pck := v.pckChain(q.PCKChain)
	if pck.err != nil {
		res.fail(ReasonTDXPCKChainInvalid, "%v", pck.err)
		return nil
	}
	if now := v.now(); now.Before(pck.notBefore) || now.After(pck.notAfter) {
		res.fail(ReasonTDXPCKChainInvalid, "PCK chain is valid from %s to %s", pck.notBefore.Format(time.RFC3339), pck.notAfter.Format(time.RFC3339))
		return nil
	}
	qeDigest := sha256.Sum256(q.QEReport)
	if !verifyRS(pck.pub, qeDigest[:], q.QEReportSignature) {
		res.fail(ReasonTDXQEReportInvalid, "QE report signature does not verify with the PCK key")
		return nil
	}
	h := sha256.New()
	h.Write(q.AttestationKey)
	h.Write(q.QEAuthData)
	want := make([]byte, 64)
	copy(want, h.Sum(nil))
	if !bytes.Equal(q.QEReportData(), want) {
		res.fail(ReasonTDXQEReportInvalid, "QE report data does not bind the attestation key")
		return nil
	}
	ak, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, q.AttestationKey...))
	if err != nil {
		res.fail(ReasonTDXQuoteMalformed, "attestation key: %v", err)
		return nil
	}
	d := sha256.Sum256(q.Signed())
	if !verifyRS(ak, d[:], q.Signature) {
		res.fail(ReasonTDXSignatureInvalid, "quote signature does not verify with the attestation key")
		return q.Body.ReportData
	}

	claims := tdxClaims(q, pck)
	res.TDX = claims
	res.TCB = events.TCB{
		TEETCBSVN:   hex.EncodeToString(claims.TEETCBSVN),
		MRSEAM:      hex.EncodeToString(claims.MRSEAM),
		Measurement: hex.EncodeToString(claims.MRTD),
		Product:     "TDX",
	}

	// The TD report in the HCL report is MAC-protected only: tie it to the
	// quote made from it.
	tdr, err := tdx.ParseTDReport(rep.Hardware)
	if err == nil {
		err = tdr.Match(q)
	}
	if err != nil {
		res.fail(ReasonTDXTDReportMismatch, "%v", err)
	}

	if !pck.crossCheck.Load() {
		if err := crossCheckTDX(ctx, b.TDQuote, pck, v.now()); err != nil {
			res.fail(ReasonTDXPCKChainInvalid, "go-tdx-guest rejects the quote: %v", err)
			return q.Body.ReportData
		}
		pck.crossCheck.Store(true)
	}
	if v.cfg.TDXCollateral {
		v.tdxCollateral(ctx, res, q, pck)
	}
	return q.Body.ReportData
}

// crossCheckTDX has go-tdx-guest verify the quote offline against the same
// trusted root, on first use of a PCK chain.
func crossCheckTDX(ctx context.Context, raw []byte, pck *pckEntry, now time.Time) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("go-tdx-guest panicked: %v", r)
		}
	}()
	quote, err := tdxabi.QuoteToProto(raw)
	if err != nil {
		return err
	}
	opts := &tdxverify.Options{
		TrustedRoots: pck.roots,
		Now:          &tdxverify.TimeSet{PckCertChain: now, TcbInfo: now, QeIdentity: now, PckCrl: now, RootCaCrl: now},
	}
	return tdxverify.TdxQuoteContext(ctx, quote, opts)
}

func tdxClaims(q *tdx.Quote, pck *pckEntry) *TDXClaims {
	b := &q.Body
	attrs := binary.LittleEndian.Uint64(b.TDAttributes)
	return &TDXClaims{
		TEETCBSVN:      b.TEETCBSVN,
		MRSEAM:         b.MRSEAM,
		MRSignerSEAM:   b.MRSignerSEAM,
		SEAMAttributes: b.SEAMAttributes,
		TDAttributes:   b.TDAttributes,
		XFAM:           b.XFAM,
		MRTD:           b.MRTD,
		MRConfigID:     b.MRConfigID,
		MROwner:        b.MROwner,
		MROwnerConfig:  b.MROwnerConfig,
		RTMR:           b.RTMR,
		ReportData:     b.ReportData,
		Debug:          attrs&tdAttrDebug != 0,
		SEPTVEDisable:  attrs&tdAttrSEPTVEDisable != 0,
		FMSPC:          pck.ext.FMSPC,
		PCESVN:         pck.ext.TCB.PCESvn,
		QESVN:          uint32(binary.LittleEndian.Uint16(q.QEReport[0x102:0x104])),
	}
}
