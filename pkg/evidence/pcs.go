package evidence

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/google/go-tdx-guest/pcs"

	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/tdx"
)

// Intel PCS collateral: TCB info (TDX) and QE identity, each signed by the
// "Intel SGX TCB Signing" certificate, and the PCK CRL signed by the PCK
// platform CA. Responses are verified, then cached in the collateral cache
// until their nextUpdate (an answer that does not verify is never stored);
// evaluations are cached per platform TCB in memory.

// PCS paths (relative to Config.PCSURL) and response headers.
const (
	pcsTCBInfoPath     = "/tdx/certification/v4/tcb?fmspc="
	pcsQEIdentityPath  = "/tdx/certification/v4/qe/identity"
	pcsPCKCRLPath      = "/sgx/certification/v4/pckcrl?ca=platform&encoding=der"
	hdrTCBInfoChain    = "Tcb-Info-Issuer-Chain"
	hdrQEIdentityChain = "Sgx-Enclave-Identity-Issuer-Chain"
	hdrPCKCRLChain     = "Sgx-Pck-Crl-Issuer-Chain"
	pcsFallbackTTL     = time.Hour
)

// TCB statuses from worst to best, for combining several.
var tcbStatusRank = map[string]int{
	"UpToDate": 0, "SWHardeningNeeded": 1, "ConfigurationNeeded": 2, "ConfigurationAndSWHardeningNeeded": 3,
	"OutOfDate": 4, "OutOfDateConfigurationNeeded": 5, "Revoked": 6,
}

func worseStatus(a, b string) string {
	if tcbStatusRank[b] > tcbStatusRank[a] {
		return b
	}
	return a
}

type tdxTCBEntry struct {
	status      string
	advisories  []string
	expires     time.Time
	err         error // collateral invalid or the platform revoked: a verification failure
	unavailable error // collateral could not be obtained
}

func (v *Verifier) tdxCollateral(ctx context.Context, res *Result, q *tdx.Quote, pck *pckEntry) {
	h := sha256.New()
	h.Write(q.PCKChain)
	h.Write(q.QEReport)
	h.Write(q.Body.TEETCBSVN)
	h.Write(q.Body.MRSignerSEAM)
	h.Write(q.Body.SEAMAttributes)
	var key [32]byte
	h.Sum(key[:0])
	now := v.now()
	e, ok := v.tcbs.Get(key)
	if !ok || !now.Before(e.expires) {
		e = v.evaluateTDXTCB(ctx, q, pck)
		if e.unavailable == nil {
			v.tcbs.Add(key, e)
		}
	}
	switch {
	case e.unavailable != nil:
		res.unavailable(ReasonTDXCollateralUnavailable, "%v", e.unavailable)
	case e.err != nil:
		res.fail(ReasonTDXCollateralInvalid, "%v", e.err)
	default:
		res.TDX.TCBStatus = e.status
		res.TDX.AdvisoryIDs = e.advisories
		res.TCB.TCBStatus = e.status
	}
}

type signedTCBInfo struct {
	TCBInfo   json.RawMessage `json:"tcbInfo"`
	Signature string          `json:"signature"`
}

type signedQEIdentity struct {
	EnclaveIdentity json.RawMessage `json:"enclaveIdentity"`
	Signature       string          `json:"signature"`
}

// pcsCacheKey is the collateral cache key of an Intel PCS URL.
func pcsCacheKey(u string) string {
	d := sha256.Sum256([]byte(u))
	return "intel.pcs." + hex.EncodeToString(d[:])
}

// fetchVerified obtains u through the collateral cache under key and
// verifies it with verify, which returns the parsed document and until when
// to cache it. verify runs in fetchCollateral on cached answers and on
// fetched ones before they are stored, so only genuine collateral reaches
// the shared cache; an answer a concurrent call fetched is verified here.
// The error wraps errCollateralRejected when the answer does not verify.
func fetchVerified[T any](ctx context.Context, v *Verifier, key, u string, verify func(body []byte, hdr http.Header) (T, time.Time, error)) (T, error) {
	var (
		doc     T
		checked bool
	)
	body, hdr, err := v.fetchCollateral(ctx, key, u, func(body []byte, hdr http.Header) (time.Time, error) {
		d, until, err := verify(body, hdr)
		if err != nil {
			return time.Time{}, err
		}
		doc, checked = d, true
		return until, nil
	})
	if err != nil || checked {
		return doc, err
	}
	doc, _, err = verify(body, hdr)
	if err != nil {
		return doc, fmt.Errorf("%s: %w: %w", u, errCollateralRejected, err)
	}
	return doc, nil
}

// collateralErr files err from fetchVerified into e: collateral that does
// not verify is a failure, collateral that cannot be obtained unavailable.
func (e *tdxTCBEntry) collateralErr(what string, err error) *tdxTCBEntry {
	if errors.Is(err, errCollateralRejected) {
		e.err = err // names the document already
	} else {
		e.unavailable = fmt.Errorf("intel PCS %s: %w", what, err)
	}
	return e
}

func (v *Verifier) evaluateTDXTCB(ctx context.Context, q *tdx.Quote, pck *pckEntry) *tdxTCBEntry {
	e := &tdxTCBEntry{}
	fail := func(format string, args ...any) *tdxTCBEntry {
		e.err = fmt.Errorf(format, args...)
		return e
	}
	now := v.now()

	u := v.cfg.PCSURL + pcsTCBInfoPath + url.QueryEscape(pck.ext.FMSPC)
	info, err := fetchVerified(ctx, v, pcsCacheKey(u), u, func(body []byte, hdr http.Header) (*pcs.TcbInfo, time.Time, error) {
		return v.verifyTCBInfo(body, hdr, pck, now)
	})
	if err != nil {
		return e.collateralErr("TCB info", err)
	}
	u = v.cfg.PCSURL + pcsQEIdentityPath
	qe, err := fetchVerified(ctx, v, pcsCacheKey(u), u, func(body []byte, hdr http.Header) (*pcs.EnclaveIdentity, time.Time, error) {
		return v.verifyQEIdentity(body, hdr, now)
	})
	if err != nil {
		return e.collateralErr("QE identity", err)
	}
	u = v.cfg.PCSURL + pcsPCKCRLPath
	crl, err := fetchVerified(ctx, v, pcsCacheKey(u), u, func(body []byte, hdr http.Header) (*x509.RevocationList, time.Time, error) {
		return verifyPCKCRL(body, hdr.Get(hdrPCKCRLChain), pck, now)
	})
	if err != nil {
		return e.collateralErr("PCK CRL", err)
	}
	for _, r := range crl.RevokedCertificateEntries {
		if r.SerialNumber.Cmp(pck.chain.PCK.SerialNumber) == 0 {
			return fail("PCK certificate %x is revoked since %s", pck.chain.PCK.SerialNumber, r.RevocationTime.Format(time.RFC3339))
		}
	}

	qeStatus, err := qeTCBStatus(qe, q.QEReport)
	if err != nil {
		return fail("QE report: %v", err)
	}
	status, advisories, err := platformTCBStatus(info, q, pck)
	if err != nil {
		return fail("%v", err)
	}
	e.status = worseStatus(status, qeStatus)
	e.advisories = advisories
	e.expires = info.NextUpdate
	if qe.NextUpdate.Before(e.expires) {
		e.expires = qe.NextUpdate
	}
	return e
}

// verifyTCBInfo verifies a PCS TCB info answer for pck's platform: signed
// by Intel's TCB signing key chaining to a trusted Intel root, TDX version
// 3, for pck's FMSPC and PCEID, and current. It returns the TCB info and
// its nextUpdate.
func (v *Verifier) verifyTCBInfo(body []byte, hdr http.Header, pck *pckEntry, now time.Time) (*pcs.TcbInfo, time.Time, error) {
	var st signedTCBInfo
	if err := json.Unmarshal(body, &st); err != nil || len(st.TCBInfo) == 0 {
		return nil, time.Time{}, fmt.Errorf("TCB info is not signed TCB info JSON: %v", err)
	}
	if err := v.verifyPCSSignature(hdr.Get(hdrTCBInfoChain), st.TCBInfo, st.Signature, now); err != nil {
		return nil, time.Time{}, fmt.Errorf("TCB info: %w", err)
	}
	var info pcs.TcbInfo
	if err := json.Unmarshal(st.TCBInfo, &info); err != nil {
		return nil, time.Time{}, fmt.Errorf("TCB info: %w", err)
	}
	if info.ID != "TDX" || info.Version != 3 {
		return nil, time.Time{}, fmt.Errorf("TCB info id %q version %d, want TDX version 3", info.ID, info.Version)
	}
	if !strings.EqualFold(info.Fmspc, pck.ext.FMSPC) || !strings.EqualFold(info.PceID, pck.ext.PCEID) {
		return nil, time.Time{}, fmt.Errorf("TCB info is for FMSPC %s PCEID %s, the PCK certificate says %s %s", info.Fmspc, info.PceID, pck.ext.FMSPC, pck.ext.PCEID)
	}
	if now.After(info.NextUpdate) {
		return nil, time.Time{}, fmt.Errorf("TCB info expired at %s", info.NextUpdate.Format(time.RFC3339))
	}
	return &info, info.NextUpdate, nil
}

// verifyQEIdentity verifies a PCS QE identity answer: signed by Intel's TCB
// signing key chaining to a trusted Intel root, TD_QE version 2, and
// current. It returns the identity and its nextUpdate.
func (v *Verifier) verifyQEIdentity(body []byte, hdr http.Header, now time.Time) (*pcs.EnclaveIdentity, time.Time, error) {
	var sq signedQEIdentity
	if err := json.Unmarshal(body, &sq); err != nil || len(sq.EnclaveIdentity) == 0 {
		return nil, time.Time{}, fmt.Errorf("QE identity is not signed enclave identity JSON: %v", err)
	}
	if err := v.verifyPCSSignature(hdr.Get(hdrQEIdentityChain), sq.EnclaveIdentity, sq.Signature, now); err != nil {
		return nil, time.Time{}, fmt.Errorf("QE identity: %w", err)
	}
	var qe pcs.EnclaveIdentity
	if err := json.Unmarshal(sq.EnclaveIdentity, &qe); err != nil {
		return nil, time.Time{}, fmt.Errorf("QE identity: %w", err)
	}
	if qe.ID != "TD_QE" || qe.Version != 2 {
		return nil, time.Time{}, fmt.Errorf("QE identity id %q version %d, want TD_QE version 2", qe.ID, qe.Version)
	}
	if now.After(qe.NextUpdate) {
		return nil, time.Time{}, fmt.Errorf("QE identity expired at %s", qe.NextUpdate.Format(time.RFC3339))
	}
	return &qe, qe.NextUpdate, nil
}

// verifyPCSSignature checks a PCS JSON member signed by the TCB signing
// certificate whose chain (URL-escaped PEM: signing cert, root) is in the
// response header; the root must be a trusted Intel root.
func (v *Verifier) verifyPCSSignature(chainHdr string, signed json.RawMessage, sigHex string, now time.Time) error {
	chain, err := url.QueryUnescape(chainHdr)
	if err != nil || chain == "" {
		return errors.New("issuer chain header missing or not URL-escaped")
	}
	certs, err := parsePEMCerts([]byte(chain), 2)
	if err != nil {
		return fmt.Errorf("issuer chain: %w", err)
	}
	signer, root := certs[0], certs[1]
	if v.roots.intelRoot(root) == nil {
		return errors.New("issuer chain does not end in a trusted Intel root")
	}
	if signer.Subject.CommonName != "Intel SGX TCB Signing" {
		return fmt.Errorf("signed by %q, not Intel SGX TCB Signing", signer.Subject.CommonName)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	if _, err := signer.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("TCB signing certificate: %w", err)
	}
	pub, ok := signer.PublicKey.(*ecdsa.PublicKey)
	if !ok {
		return errors.New("TCB signing key is not ECDSA")
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || len(sig) != 64 {
		return errors.New("signature is not 64 bytes of hex")
	}
	d := sha256.Sum256(signed)
	if !verifyRS(pub, d[:], sig) {
		return errors.New("signature invalid")
	}
	return nil
}

func parsePEMCerts(b []byte, want int) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
		if len(certs) > want {
			break
		}
	}
	if len(certs) != want {
		return nil, fmt.Errorf("%d certificates, want %d", len(certs), want)
	}
	return certs, nil
}

// verifyPCKCRL checks that a PCK CRL is genuine (signed by the quote's PCK
// platform CA, which chains to a trusted Intel root) and current, and
// returns it with its nextUpdate. Whether it revokes the PCK certificate is
// for the caller to check.
func verifyPCKCRL(der []byte, chainHdr string, pck *pckEntry, now time.Time) (*x509.RevocationList, time.Time, error) {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("PCK CRL: %w", err)
	}
	issuer := pck.chain.Intermediate
	if chain, err := url.QueryUnescape(chainHdr); err == nil && chain != "" {
		if certs, err := parsePEMCerts([]byte(chain), 2); err == nil && !bytes.Equal(certs[0].Raw, issuer.Raw) {
			return nil, time.Time{}, errors.New("PCK CRL issuer chain is not the quote's PCK platform CA")
		}
	}
	if err := crl.CheckSignatureFrom(issuer); err != nil {
		return nil, time.Time{}, fmt.Errorf("PCK CRL signature: %w", err)
	}
	if now.After(crl.NextUpdate) {
		return nil, time.Time{}, fmt.Errorf("PCK CRL expired at %s", crl.NextUpdate.Format(time.RFC3339))
	}
	return crl, crl.NextUpdate, nil
}

func maskEqual(value, mask, want []byte) bool {
	if len(value) != len(mask) || len(mask) != len(want) {
		return false
	}
	for i := range value {
		if value[i]&mask[i] != want[i] {
			return false
		}
	}
	return true
}

// qeTCBStatus checks the QE report against the QE identity and returns its TCB status.
func qeTCBStatus(qe *pcs.EnclaveIdentity, report []byte) (string, error) {
	misc := report[0x10:0x14]
	attrs := report[0x30:0x40]
	mrSigner := report[0x80:0xA0]
	prodID := binary.LittleEndian.Uint16(report[0x100:0x102])
	isvSVN := binary.LittleEndian.Uint16(report[0x102:0x104])
	if !maskEqual(misc, qe.MiscselectMask.Bytes, qe.Miscselect.Bytes) {
		return "", errors.New("MISCSELECT does not match the QE identity")
	}
	if !maskEqual(attrs, qe.AttributesMask.Bytes, qe.Attributes.Bytes) {
		return "", errors.New("attributes do not match the QE identity")
	}
	if !bytes.Equal(mrSigner, qe.Mrsigner.Bytes) {
		return "", errors.New("MRSIGNER is not the QE identity's")
	}
	if prodID != qe.IsvProdID {
		return "", fmt.Errorf("ISVPRODID %d, QE identity has %d", prodID, qe.IsvProdID)
	}
	for _, l := range qe.TcbLevels {
		if uint32(isvSVN) >= l.Tcb.Isvsvn {
			return string(l.TcbStatus), nil
		}
	}
	return "", fmt.Errorf("no QE TCB level for ISVSVN %d", isvSVN)
}

// platformTCBStatus matches the platform (PCK certificate SVNs, TEE TCB
// SVN, TDX module) against the TCB info levels, the first match (levels
// are sorted newest first) giving the status.
func platformTCBStatus(info *pcs.TcbInfo, q *tdx.Quote, pck *pckEntry) (string, []string, error) {
	b := &q.Body
	if !bytes.Equal(info.TdxModule.Mrsigner.Bytes, b.MRSignerSEAM) {
		return "", nil, errors.New("MRSIGNERSEAM is not the TCB info's TDX module signer")
	}
	if !maskEqual(b.SEAMAttributes, info.TdxModule.AttributesMask.Bytes, info.TdxModule.Attributes.Bytes) {
		return "", nil, errors.New("SEAM attributes do not match the TCB info")
	}
	cpu, pceSVN, tee := pck.ext.TCB.CPUSvnComponents, pck.ext.TCB.PCESvn, b.TEETCBSVN
	var level *pcs.TcbLevel
	for i := range info.TcbLevels {
		l := &info.TcbLevels[i]
		if len(l.Tcb.SgxTcbcomponents) != 16 || len(l.Tcb.TdxTcbcomponents) != 16 || len(cpu) != 16 {
			continue
		}
		ok := pceSVN >= l.Tcb.Pcesvn
		for j := 0; ok && j < 16; j++ {
			ok = cpu[j] >= l.Tcb.SgxTcbcomponents[j].Svn
		}
		start := 0
		if tee[1] > 0 {
			start = 2 // TDX module version and SVN are judged by the module identity
		}
		for j := start; ok && j < 16; j++ {
			ok = tee[j] >= l.Tcb.TdxTcbcomponents[j].Svn
		}
		if ok {
			level = l
			break
		}
	}
	if level == nil {
		return "", nil, errors.New("no TCB level matches the platform: TCB is unsupported")
	}
	status := string(level.TcbStatus)
	advisories := slices.Clone(level.AdvisoryIDs)
	if tee[1] > 0 {
		id := fmt.Sprintf("TDX_%02X", tee[1])
		var mod *pcs.TdxModuleIdentity
		for i := range info.TdxModuleIdentities {
			if strings.EqualFold(info.TdxModuleIdentities[i].ID, id) {
				mod = &info.TdxModuleIdentities[i]
			}
		}
		if mod == nil {
			return "", nil, fmt.Errorf("TCB info has no TDX module identity %s", id)
		}
		if !bytes.Equal(mod.Mrsigner.Bytes, b.MRSignerSEAM) {
			return "", nil, fmt.Errorf("MRSIGNERSEAM is not the signer of %s", id)
		}
		var ml *pcs.TcbLevel
		for i := range mod.TcbLevels {
			if uint32(tee[0]) >= mod.TcbLevels[i].Tcb.Isvsvn {
				ml = &mod.TcbLevels[i]
				break
			}
		}
		if ml == nil {
			return "", nil, fmt.Errorf("no %s TCB level for SVN %d", id, tee[0])
		}
		status = worseStatus(status, string(ml.TcbStatus))
		advisories = append(advisories, ml.AdvisoryIDs...)
	}
	if status == "Revoked" {
		return "", nil, errors.New("intel reports the platform TCB as revoked")
	}
	return status, advisories, nil
}

// cachedResponse is an HTTP answer stored in the collateral cache.
type cachedResponse struct {
	Header http.Header `json:"header"`
	Body   []byte      `json:"body"`
}

// pcsHeaders are the response headers kept in the cache.
var pcsHeaders = []string{hdrTCBInfoChain, hdrQEIdentityChain, hdrPCKCRLChain}

// errCollateralRejected marks an answer that check refused: it is not cached
// and is a verification failure, not unavailability.
var errCollateralRejected = errors.New("rejected")

// fetchCollateral GETs u through the collateral cache under key. An
// answer, cached or fresh, is passed to check, which returns until when to
// cache it (zero: pcsFallbackTTL) or an error. A fresh answer check refuses
// is not cached: the error is returned wrapped in errCollateralRejected. A
// cached one it refuses is fetched again (and replaced when the fresh
// answer passes); when no fresh answer can be had, the cached one's
// rejection is returned. Concurrent fetches of key are collapsed: check
// runs in the caller that fetched only, the others get the answer
// unchecked. After a failed fetch or a rejected answer, key backs off (see
// collateral.Fetcher).
func (v *Verifier) fetchCollateral(ctx context.Context, key, u string, check func(body []byte, hdr http.Header) (time.Time, error)) ([]byte, http.Header, error) {
	var cachedErr error
	if raw, err := v.coll.Get(ctx, key); err == nil {
		var cr cachedResponse
		if json.Unmarshal(raw, &cr) == nil {
			if _, cachedErr = check(cr.Body, cr.Header); cachedErr == nil {
				return cr.Body, cr.Header, nil
			}
			v.log.WarnContext(ctx, "cached collateral does not verify, fetching it again", "key", key, "err", cachedErr)
		}
	} else if !errors.Is(err, collateral.ErrNotFound) {
		v.log.WarnContext(ctx, "collateral cache read failed", "key", key, "err", err)
	}
	if v.cfg.Offline {
		return nil, nil, cachedCopyRejected(u, cachedErr, fmt.Errorf("%s: %w", u, ErrOffline))
	}
	body, hdr, err := v.fetch.Fetch(ctx, key, u, func(body []byte, hdr http.Header) ([]byte, http.Header, error) {
		keep := http.Header{}
		for _, h := range pcsHeaders {
			if val := hdr.Get(h); val != "" {
				keep.Set(h, val)
			}
		}
		exp, err := check(body, keep)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w: %w", u, errCollateralRejected, err)
		}
		if exp.IsZero() {
			exp = v.now().Add(pcsFallbackTTL)
		}
		raw, err := json.Marshal(cachedResponse{Header: keep, Body: body})
		if err == nil {
			err = v.coll.Put(ctx, key, raw, exp)
		}
		if err != nil {
			v.log.WarnContext(ctx, "collateral cache write failed", "key", key, "err", err)
		}
		return body, keep, nil
	})
	return body, hdr, cachedCopyRejected(u, cachedErr, err)
}

// cachedCopyRejected is the error of obtaining collateral from u when its
// cached copy did not verify (cachedErr) and fetching it again ended in
// err: the cached copy's rejection, a verification failure as when no
// fresh copy is sought. It is err itself when there was no such copy or
// the fresh answer was rejected too.
func cachedCopyRejected(u string, cachedErr, err error) error {
	if cachedErr == nil || err == nil || errors.Is(err, errCollateralRejected) {
		return err
	}
	return fmt.Errorf("%s: cached copy %w: %w (no fresh copy: %w)", u, errCollateralRejected, cachedErr, err)
}
