// Package tdx parses and assembles Intel TDX evidence: the ECDSA quote v4
// (strictly, with bounds), its PCK certificate chain, and the TD report the
// Azure paravisor stores in the HCL report.
package tdx

import (
	"bytes"
	"crypto/x509"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
)

// Quote v4 layout.
const (
	HeaderSize      = 0x30
	BodySize        = 0x248
	SignedSize      = HeaderSize + BodySize // header and body are what the attestation key signs
	QEReportSize    = 0x180
	SignatureSize   = 0x40
	AttestKeySize   = 0x40
	MaxQuoteSize    = 16 << 10
	MaxPCKChainSize = 12 << 10

	QuoteVersion4      = 4
	AttestKeyECDSAP256 = 2
	TEETypeTDX         = 0x81

	certDataQEReport = 6
	certDataPCKChain = 5
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("tdx: malformed")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Body is the TD quote body (TD report fields signed by the quoting enclave).
// Slices alias the parsed input.
type Body struct {
	TEETCBSVN      []byte // 16
	MRSEAM         []byte // 48
	MRSignerSEAM   []byte // 48
	SEAMAttributes []byte // 8
	TDAttributes   []byte // 8
	XFAM           []byte // 8
	MRTD           []byte // 48
	MRConfigID     []byte // 48
	MROwner        []byte // 48
	MROwnerConfig  []byte // 48
	RTMR           [4][]byte
	ReportData     []byte // 64
}

// Quote is a parsed TDX quote v4. Slices alias the parsed input.
type Quote struct {
	Raw                []byte
	Version            uint16
	AttestationKeyType uint16
	TEEType            uint32
	QEVendorID         []byte
	UserData           []byte
	Body               Body
	Signature          []byte // r||s over Raw[:SignedSize]
	AttestationKey     []byte // x||y, P-256
	QEReport           []byte // SGX enclave report of the quoting enclave
	QEReportSignature  []byte // r||s by the PCK key
	QEAuthData         []byte
	PCKChain           []byte // PEM chain as stored (leaf, intermediate, root)
}

// Signed returns the bytes the attestation key signs (header and body).
func (q *Quote) Signed() []byte { return q.Raw[:SignedSize] }

// QEReportData returns the report data of the QE report.
func (q *Quote) QEReportData() []byte { return q.QEReport[0x140:0x180] }

func parseBody(b []byte) Body {
	var body Body
	off := 0
	next := func(n int) []byte {
		s := b[off : off+n : off+n]
		off += n
		return s
	}
	body.TEETCBSVN = next(16)
	body.MRSEAM = next(48)
	body.MRSignerSEAM = next(48)
	body.SEAMAttributes = next(8)
	body.TDAttributes = next(8)
	body.XFAM = next(8)
	body.MRTD = next(48)
	body.MRConfigID = next(48)
	body.MROwner = next(48)
	body.MROwnerConfig = next(48)
	for i := range body.RTMR {
		body.RTMR[i] = next(48)
	}
	body.ReportData = next(64)
	return body
}

// ParseQuote parses a TDX quote v4 with ECDSA-256 attestation key and
// QE report certification data carrying a PCK certificate chain. Every
// length must be consistent; bytes after the signed data must be zero.
func ParseQuote(b []byte) (*Quote, error) {
	if len(b) > MaxQuoteSize {
		return nil, malformed("quote of %d bytes exceeds %d", len(b), MaxQuoteSize)
	}
	const fixed = SignedSize + 4 + SignatureSize + AttestKeySize + 6
	if len(b) < fixed {
		return nil, malformed("quote of %d bytes is shorter than %d", len(b), fixed)
	}
	le16 := binary.LittleEndian.Uint16
	le32 := binary.LittleEndian.Uint32
	q := &Quote{
		Raw:                b,
		Version:            le16(b[0:2]),
		AttestationKeyType: le16(b[2:4]),
		TEEType:            le32(b[4:8]),
		QEVendorID:         b[0x0C:0x1C],
		UserData:           b[0x1C:0x30],
	}
	if q.Version != QuoteVersion4 {
		return nil, malformed("quote version %d, want %d", q.Version, QuoteVersion4)
	}
	if q.AttestationKeyType != AttestKeyECDSAP256 {
		return nil, malformed("attestation key type %d, want %d (ECDSA-256)", q.AttestationKeyType, AttestKeyECDSAP256)
	}
	if q.TEEType != TEETypeTDX {
		return nil, malformed("TEE type 0x%x, want 0x%x (TDX)", q.TEEType, TEETypeTDX)
	}
	q.Body = parseBody(b[HeaderSize:SignedSize])
	sigDataSize := int(le32(b[SignedSize : SignedSize+4]))
	rest := b[SignedSize+4:]
	if sigDataSize > len(rest) {
		return nil, malformed("signed data size %d exceeds the %d bytes present", sigDataSize, len(rest))
	}
	for _, c := range rest[sigDataSize:] {
		if c != 0 {
			return nil, malformed("non-zero bytes after the signed data")
		}
	}
	sd := rest[:sigDataSize]
	if len(sd) < SignatureSize+AttestKeySize+6 {
		return nil, malformed("signed data of %d bytes is too short", len(sd))
	}
	q.Signature = sd[0:SignatureSize]
	q.AttestationKey = sd[SignatureSize : SignatureSize+AttestKeySize]
	cd := sd[SignatureSize+AttestKeySize:]
	if t := le16(cd[0:2]); t != certDataQEReport {
		return nil, malformed("certification data type %d, want %d (QE report)", t, certDataQEReport)
	}
	if n := int(le32(cd[2:6])); n != len(cd)-6 {
		return nil, malformed("certification data size %d, %d bytes present", n, len(cd)-6)
	}
	qe := cd[6:]
	if len(qe) < QEReportSize+SignatureSize+2 {
		return nil, malformed("QE report certification data of %d bytes is too short", len(qe))
	}
	q.QEReport = qe[:QEReportSize]
	q.QEReportSignature = qe[QEReportSize : QEReportSize+SignatureSize]
	qe = qe[QEReportSize+SignatureSize:]
	authLen := int(le16(qe[0:2]))
	if 2+authLen+6 > len(qe) {
		return nil, malformed("QE auth data size %d exceeds the bytes present", authLen)
	}
	q.QEAuthData = qe[2 : 2+authLen]
	pc := qe[2+authLen:]
	if t := le16(pc[0:2]); t != certDataPCKChain {
		return nil, malformed("inner certification data type %d, want %d (PCK chain)", t, certDataPCKChain)
	}
	if n := int(le32(pc[2:6])); n != len(pc)-6 {
		return nil, malformed("PCK chain size %d, %d bytes present", n, len(pc)-6)
	}
	q.PCKChain = pc[6:]
	if len(q.PCKChain) == 0 || len(q.PCKChain) > MaxPCKChainSize {
		return nil, malformed("PCK chain of %d bytes", len(q.PCKChain))
	}
	return q, nil
}

// Chain is a parsed PCK certificate chain.
type Chain struct {
	PCK, Intermediate, Root *x509.Certificate
}

// ParsePCKChain parses the PEM chain leaf, intermediate, root. The PEM must
// be canonical (re-encoding it gives the same bytes, optionally followed by
// one NUL byte) so that no byte of the quote can change unnoticed.
func ParsePCKChain(chain []byte) (*Chain, error) {
	body := chain
	if n := len(body); n > 0 && body[n-1] == 0 {
		body = body[:n-1]
	}
	var certs []*x509.Certificate
	var canon []byte
	rest := body
	for len(rest) > 0 {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, malformed("PCK chain has bytes that are not PEM")
		}
		if blk.Type != "CERTIFICATE" || len(blk.Headers) != 0 {
			return nil, malformed("PCK chain block %q is not a plain CERTIFICATE", blk.Type)
		}
		if len(certs) == 3 {
			return nil, malformed("PCK chain has more than 3 certificates")
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, malformed("PCK chain certificate %d: %v", len(certs), err)
		}
		certs = append(certs, c)
		canon = append(canon, pem.EncodeToMemory(blk)...)
	}
	if len(certs) != 3 {
		return nil, malformed("PCK chain has %d certificates, want 3", len(certs))
	}
	if !bytes.Equal(canon, body) {
		return nil, malformed("PCK chain PEM is not canonical")
	}
	return &Chain{PCK: certs[0], Intermediate: certs[1], Root: certs[2]}, nil
}

// AssembleQuote encodes a quote v4 from its parts. signature, attestKey and
// qeReportSignature are r||s and x||y as in the quote.
func AssembleQuote(header, body, signature, attestKey, qeReport, qeReportSignature, qeAuthData, pckChain []byte) ([]byte, error) {
	if len(header) != HeaderSize || len(body) != BodySize || len(signature) != SignatureSize ||
		len(attestKey) != AttestKeySize || len(qeReport) != QEReportSize || len(qeReportSignature) != SignatureSize {
		return nil, errors.New("tdx: quote part of wrong size")
	}
	if len(qeAuthData) > 0xFFFF {
		return nil, errors.New("tdx: QE auth data too long")
	}
	le16 := binary.LittleEndian.AppendUint16
	le32 := binary.LittleEndian.AppendUint32
	var inner []byte
	inner = append(inner, qeReport...)
	inner = append(inner, qeReportSignature...)
	inner = le16(inner, uint16(len(qeAuthData)))
	inner = append(inner, qeAuthData...)
	inner = le16(inner, certDataPCKChain)
	inner = le32(inner, uint32(len(pckChain)))
	inner = append(inner, pckChain...)

	var sd []byte
	sd = append(sd, signature...)
	sd = append(sd, attestKey...)
	sd = le16(sd, certDataQEReport)
	sd = le32(sd, uint32(len(inner)))
	sd = append(sd, inner...)

	out := make([]byte, 0, SignedSize+4+len(sd))
	out = append(out, header...)
	out = append(out, body...)
	out = le32(out, uint32(len(sd)))
	return append(out, sd...), nil
}

// Header encodes a quote v4 header for an ECDSA-256 TDX quote.
func Header(qeSVN, pceSVN uint16, qeVendorID [16]byte, userData [20]byte) []byte {
	h := make([]byte, 0, HeaderSize)
	h = binary.LittleEndian.AppendUint16(h, QuoteVersion4)
	h = binary.LittleEndian.AppendUint16(h, AttestKeyECDSAP256)
	h = binary.LittleEndian.AppendUint32(h, TEETypeTDX)
	h = binary.LittleEndian.AppendUint16(h, qeSVN)
	h = binary.LittleEndian.AppendUint16(h, pceSVN)
	h = append(h, qeVendorID[:]...)
	return append(h, userData[:]...)
}

// Marshal encodes the body (584 bytes). Short fields are zero-extended.
func (b *Body) Marshal() []byte {
	out := make([]byte, 0, BodySize)
	put := func(v []byte, n int) {
		f := make([]byte, n)
		copy(f, v)
		out = append(out, f...)
	}
	put(b.TEETCBSVN, 16)
	put(b.MRSEAM, 48)
	put(b.MRSignerSEAM, 48)
	put(b.SEAMAttributes, 8)
	put(b.TDAttributes, 8)
	put(b.XFAM, 8)
	put(b.MRTD, 48)
	put(b.MRConfigID, 48)
	put(b.MROwner, 48)
	put(b.MROwnerConfig, 48)
	for _, r := range b.RTMR {
		put(r, 48)
	}
	put(b.ReportData, 64)
	return out
}
