package sim

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-tdx-guest/pcs"
)

// intelCA is the simulated Intel: a test SGX root, a PCK platform CA, a TCB
// signing key for collateral, and simulated TDX platforms.
type intelCA struct {
	rootKey, interKey, tcbKey *ecdsa.PrivateKey
	root, inter, tcbSigner    *x509.Certificate
	platforms                 map[int]*tdxPlatform
}

// tdxPlatform is one simulated TDX host: its PCK certificate and quoting
// enclave with its attestation key.
type tdxPlatform struct {
	pckKey     *ecdsa.PrivateKey
	pck        *x509.Certificate
	chainPEM   []byte
	attKey     *ecdsa.PrivateKey
	attKeyRaw  []byte // x||y
	qeReport   []byte
	qeSig      []byte
	qeAuthData []byte
	cpuSVN     [16]byte
}

// Simulated Intel platform constants.
var (
	simFMSPC      = []byte{0x00, 0x90, 0x6e, 0xd5, 0x00, 0x00}
	simPCEID      = []byte{0x00, 0x00}
	simPCESVN     = 13
	simQEVendorID = [16]byte{0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07}
	simQEProdID   = uint16(2)
	simQESVN      = uint16(8)
	simQEAttrs    = []byte{0x11, 0, 0, 0, 0, 0, 0, 0, 0xe7, 0, 0, 0, 0, 0, 0, 0}
	// TEE TCB SVNs of simulated TDX modules: current and outdated.
	goodTEETCBSVN = []byte{0x05, 0x01, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	lowTEETCBSVN  = []byte{0x02, 0x01, 0x02, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	simXFAM       = []byte{0xe7, 0x18, 0x06, 0, 0, 0, 0, 0}
)

var (
	oidSGX      = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidSGXType  = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 5}
	intelCRLURL = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"
)

func intelName(cn string) pkix.Name {
	return pkix.Name{
		CommonName:   cn,
		Organization: []string{"Intel Corporation"},
		Locality:     []string{"Santa Clara"},
		Province:     []string{"CA"},
		Country:      []string{"US"},
	}
}

func (a *Authority) createCert(tmpl, parent *x509.Certificate, pub any, signer *ecdsa.PrivateKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(nil, tmpl, parent, pub, deterministicSigner{signer})
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

func (a *Authority) serial(labels ...any) *big.Int {
	return new(big.Int).SetBytes(a.derive(16, append([]any{"serial"}, labels...)...))
}

// intelCA returns the simulated Intel CA, building it on first use.
func (a *Authority) intelCA() (*intelCA, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.intel != nil {
		return a.intel, nil
	}
	ca := &intelCA{
		rootKey:   a.deriveKey(elliptic.P256(), "intel-root"),
		interKey:  a.deriveKey(elliptic.P256(), "intel-pck-platform-ca"),
		tcbKey:    a.deriveKey(elliptic.P256(), "intel-tcb-signing"),
		platforms: make(map[int]*tdxPlatform),
	}
	var err error
	rootTmpl := &x509.Certificate{
		SerialNumber: a.serial("root"), Subject: intelName("Intel SGX Root CA"),
		NotBefore: certEpoch, NotAfter: time.Date(2049, 12, 31, 23, 59, 59, 0, time.UTC),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 1,
		CRLDistributionPoints: []string{intelCRLURL}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}
	if ca.root, err = a.createCert(rootTmpl, rootTmpl, ca.rootKey.Public(), ca.rootKey); err != nil {
		return nil, fmt.Errorf("sim: Intel root: %w", err)
	}
	ca.inter, err = a.createCert(&x509.Certificate{
		SerialNumber: a.serial("inter"), Subject: intelName("Intel SGX PCK Platform CA"),
		NotBefore: certEpoch, NotAfter: certEpoch.Add(15 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true, MaxPathLen: 0, MaxPathLenZero: true,
		CRLDistributionPoints: []string{intelCRLURL}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, ca.root, ca.interKey.Public(), ca.rootKey)
	if err != nil {
		return nil, fmt.Errorf("sim: Intel PCK platform CA: %w", err)
	}
	ca.tcbSigner, err = a.createCert(&x509.Certificate{
		SerialNumber: a.serial("tcb-signing"), Subject: intelName("Intel SGX TCB Signing"),
		NotBefore: certEpoch, NotAfter: certEpoch.Add(15 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		CRLDistributionPoints: []string{intelCRLURL}, SignatureAlgorithm: x509.ECDSAWithSHA256,
	}, ca.root, ca.tcbKey.Public(), ca.rootKey)
	if err != nil {
		return nil, fmt.Errorf("sim: Intel TCB signing: %w", err)
	}
	a.intel = ca
	return ca, nil
}

type asn1OID struct {
	ID    asn1.ObjectIdentifier
	Value any
}

func mustMarshal(v any) asn1.RawValue {
	b, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return asn1.RawValue{FullBytes: b}
}

// sgxExtension encodes the SGX extension of a PCK certificate.
func sgxExtension(ppid []byte, cpuSVN [16]byte, pceSVN int) ([]byte, error) {
	var tcb []asn1.RawValue
	for i, c := range cpuSVN {
		oid := append(asn1.ObjectIdentifier{}, pcs.OidTCB...)
		tcb = append(tcb, mustMarshal(asn1OID{append(oid, i+1), int(c)}))
	}
	tcb = append(tcb, mustMarshal(asn1OID{pcs.OidPCESvn, pceSVN}))
	tcb = append(tcb, mustMarshal(asn1OID{pcs.OidCPUSvn, cpuSVN[:]}))
	return asn1.Marshal([]asn1.RawValue{
		mustMarshal(asn1OID{pcs.OidPPID, ppid}),
		mustMarshal(struct {
			ID    asn1.ObjectIdentifier
			Value []asn1.RawValue
		}{pcs.OidTCB, tcb}),
		mustMarshal(asn1OID{pcs.OidPCEID, simPCEID}),
		mustMarshal(asn1OID{pcs.OidFMSPC, simFMSPC}),
		mustMarshal(asn1OID{oidSGXType, asn1.Enumerated(0)}),
	})
}

// platform returns simulated TDX host h, creating it on first use.
func (a *Authority) platform(h int) (*tdxPlatform, error) {
	ca, err := a.intelCA()
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := ca.platforms[h]; ok {
		return p, nil
	}
	p := &tdxPlatform{
		pckKey: a.deriveKey(elliptic.P256(), "pck", h),
		attKey: a.deriveKey(elliptic.P256(), "qe-attestation-key", h),
		cpuSVN: [16]byte{0x07, 0x07, 0x02, 0x02, 0x03, 0x01, 0x00, 0x03},
	}
	ext, err := sgxExtension(a.derive(16, "ppid", h), p.cpuSVN, simPCESVN)
	if err != nil {
		return nil, err
	}
	skid := sha256.Sum256(a.derive(32, "pck-skid", h))
	p.pck, err = a.createCert(&x509.Certificate{
		SerialNumber: a.serial("pck", h), Subject: intelName("Intel SGX PCK Certificate"),
		NotBefore: certEpoch, NotAfter: certEpoch.Add(15 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageContentCommitment, BasicConstraintsValid: true,
		SubjectKeyId:          skid[:20],
		CRLDistributionPoints: []string{"https://api.trustedservices.intel.com/sgx/certification/v4/pckcrl?ca=platform&encoding=der"},
		ExtraExtensions:       []pkix.Extension{{Id: oidSGX, Value: ext}},
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
	}, ca.inter, p.pckKey.Public(), ca.interKey)
	if err != nil {
		return nil, fmt.Errorf("sim: PCK certificate: %w", err)
	}
	var chain bytes.Buffer
	for _, c := range []*x509.Certificate{p.pck, ca.inter, ca.root} {
		_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	chain.WriteByte(0)
	p.chainPEM = chain.Bytes()

	raw, err := p.attKey.PublicKey.Bytes()
	if err != nil {
		return nil, err
	}
	p.attKeyRaw = raw[1:]
	p.qeAuthData = a.derive(32, "qe-auth-data", h)
	p.qeReport = qeReport(p.cpuSVN, a.derive(32, "qe-mrenclave"), qeMRSigner(a), p.attKeyRaw, p.qeAuthData)
	d := sha256.Sum256(p.qeReport)
	p.qeSig, err = signRS(p.pckKey, d[:])
	if err != nil {
		return nil, err
	}
	ca.platforms[h] = p
	return p, nil
}

func qeMRSigner(a *Authority) []byte { return a.derive(32, "qe-mrsigner") }

// qeReport encodes the quoting enclave's SGX report binding the attestation key.
func qeReport(cpuSVN [16]byte, mrEnclave, mrSigner, attKey, authData []byte) []byte {
	r := make([]byte, 384)
	copy(r[0:16], cpuSVN[:])
	copy(r[0x30:0x40], simQEAttrs)
	copy(r[0x40:0x60], mrEnclave)
	copy(r[0x80:0xA0], mrSigner)
	binary.LittleEndian.PutUint16(r[0x100:0x102], simQEProdID)
	binary.LittleEndian.PutUint16(r[0x102:0x104], simQESVN)
	h := sha256.New()
	h.Write(attKey)
	h.Write(authData)
	copy(r[0x140:0x160], h.Sum(nil))
	return r
}

// signRS signs digest with k and returns r||s (32 bytes each).
func signRS(k *ecdsa.PrivateKey, digest []byte) ([]byte, error) {
	der, err := k.Sign(nil, digest, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, err
	}
	return append(sig.R.FillBytes(make([]byte, 32)), sig.S.FillBytes(make([]byte, 32))...), nil
}
