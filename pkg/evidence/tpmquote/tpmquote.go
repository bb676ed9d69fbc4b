// Package tpmquote parses, verifies and builds TPM 2.0 quotes: a TPMS_ATTEST
// of type quote with its TPMT_SIGNATURE (or bare signature bytes).
package tpmquote

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Bounds on accepted input.
const (
	MaxAttestSize    = 2048
	MaxSignatureSize = 1024
	NumPCRs          = 24
)

// Errors, wrapped by what the functions return.
var (
	ErrMalformed    = errors.New("tpm quote malformed")
	ErrSignature    = errors.New("tpm quote signature invalid")
	ErrExtraData    = errors.New("tpm quote extraData mismatch")
	ErrPCRSelection = errors.New("tpm quote PCR selection mismatch")
	ErrPCRDigest    = errors.New("tpm quote PCR digest mismatch")
)

// Selection is the PCRs of one bank covered by a quote.
type Selection struct {
	Hash tpm2.TPMAlgID
	PCRs []int
}

// Signature is a parsed quote signature.
type Signature struct {
	// Bare is true when the input was the bare signature bytes rather than
	// a TPMT_SIGNATURE; it is then RSASSA-PKCS1-v1_5/SHA-256 for RSA keys
	// and r||s with SHA-256 for ECDSA keys.
	Bare bool
	Alg  tpm2.TPMAlgID // TPMAlgRSASSA, TPMAlgRSAPSS or TPMAlgECDSA (structured only)
	Hash tpm2.TPMAlgID
	RSA  []byte // RSA signature, or the bare bytes
	R, S []byte // ECDSA
}

// Quote is a parsed TPM quote. Attest holds the exact signed bytes.
type Quote struct {
	Attest          []byte
	Magic           uint32
	QualifiedSigner []byte
	ExtraData       []byte
	Clock           uint64
	ResetCount      uint32
	RestartCount    uint32
	Safe            bool
	FirmwareVersion uint64
	Selection       []Selection
	PCRDigest       []byte
	Signature       Signature
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Parse parses a TPMS_ATTEST (which must be a quote) and its signature.
// The decoder is hand-written for speed and strictness; tests and the fuzz
// target check it against go-tpm's decoding of the same bytes.
func Parse(attest, sig []byte) (*Quote, error) {
	if len(attest) == 0 || len(attest) > MaxAttestSize {
		return nil, malformed("attest is %d bytes, want 1 to %d", len(attest), MaxAttestSize)
	}
	if len(sig) == 0 || len(sig) > MaxSignatureSize {
		return nil, malformed("signature is %d bytes, want 1 to %d", len(sig), MaxSignatureSize)
	}
	q, err := parseAttest(attest)
	if err != nil {
		return nil, err
	}
	q.Signature = parseSignature(sig)
	return q, nil
}

// reader decodes TPM (big-endian) structures.
type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b)-r.off {
		r.err = malformed("%s: %d bytes needed, %d left", what, n, len(r.b)-r.off)
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) u8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// tpm2b reads a TPM2B (16-bit size, then that many bytes).
func (r *reader) tpm2b(what string) []byte {
	n := r.u16(what)
	return r.take(int(n), what)
}

func parseAttest(attest []byte) (*Quote, error) {
	r := &reader{b: attest}
	q := &Quote{Attest: attest}
	q.Magic = r.u32("magic")
	typ := r.u16("type")
	if r.err != nil {
		return nil, r.err
	}
	// Only the TPM produces structures starting with TPM_GENERATED_VALUE; a
	// restricted key refuses to sign such data from outside.
	if q.Magic != uint32(tpm2.TPMGeneratedValue) {
		return nil, malformed("magic 0x%x is not TPM_GENERATED_VALUE", q.Magic)
	}
	if tpm2.TPMST(typ) != tpm2.TPMSTAttestQuote {
		return nil, malformed("attestation type 0x%x is not a quote", typ)
	}
	q.QualifiedSigner = r.tpm2b("qualifiedSigner")
	q.ExtraData = r.tpm2b("extraData")
	q.Clock = r.u64("clock")
	q.ResetCount = r.u32("resetCount")
	q.RestartCount = r.u32("restartCount")
	safe := r.u8("safe")
	q.Safe = safe != 0
	q.FirmwareVersion = r.u64("firmwareVersion")
	count := r.u32("pcrSelect count")
	if r.err == nil && count > 16 {
		return nil, malformed("%d PCR selections", count)
	}
	for range count {
		hash := tpm2.TPMIAlgHash(r.u16("pcrSelect hash"))
		size := r.u8("sizeofSelect")
		bitmap := r.take(int(size), "pcrSelect")
		if r.err != nil {
			return nil, r.err
		}
		if size > 4 {
			return nil, malformed("PCR select of %d bytes", size)
		}
		sel := Selection{Hash: hash}
		for i, b := range bitmap {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					sel.PCRs = append(sel.PCRs, i*8+bit)
				}
			}
		}
		q.Selection = append(q.Selection, sel)
	}
	q.PCRDigest = r.tpm2b("pcrDigest")
	if r.err != nil {
		return nil, r.err
	}
	// The signed structure must be exactly what was parsed.
	if r.off != len(attest) {
		return nil, malformed("attest has %d trailing bytes", len(attest)-r.off)
	}
	return q, nil
}

// parseAttestGoTPM decodes with go-tpm; tests compare it with parseAttest.
func parseAttestGoTPM(attest []byte) (*Quote, error) {
	a, err := unmarshal[tpm2.TPMSAttest](attest)
	if err != nil {
		return nil, malformed("TPMS_ATTEST: %v", err)
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, malformed("magic 0x%x is not TPM_GENERATED_VALUE", uint32(a.Magic))
	}
	if a.Type != tpm2.TPMSTAttestQuote {
		return nil, malformed("attestation type 0x%x is not a quote", uint16(a.Type))
	}
	info, err := a.Attested.Quote()
	if err != nil {
		return nil, malformed("quote info: %v", err)
	}
	if n := len(tpm2.Marshal(a)); n != len(attest) {
		return nil, malformed("attest has %d trailing bytes", len(attest)-n)
	}
	q := &Quote{
		Attest:          attest,
		Magic:           uint32(a.Magic),
		QualifiedSigner: a.QualifiedSigner.Buffer,
		ExtraData:       a.ExtraData.Buffer,
		Clock:           a.ClockInfo.Clock,
		ResetCount:      a.ClockInfo.ResetCount,
		RestartCount:    a.ClockInfo.RestartCount,
		Safe:            bool(a.ClockInfo.Safe),
		FirmwareVersion: a.FirmwareVersion,
		PCRDigest:       info.PCRDigest.Buffer,
	}
	for _, s := range info.PCRSelect.PCRSelections {
		sel := Selection{Hash: s.Hash}
		for i, b := range s.PCRSelect {
			for bit := range 8 {
				if b&(1<<bit) != 0 {
					sel.PCRs = append(sel.PCRs, i*8+bit)
				}
			}
		}
		q.Selection = append(q.Selection, sel)
	}
	return q, nil
}

// unmarshal wraps tpm2.Unmarshal, turning a panic on hostile input into an error.
func unmarshal[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](b []byte) (out *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("unmarshal panicked: %v", r)
		}
	}()
	return tpm2.Unmarshal[T, P](b)
}

// parseSignature decodes a TPMT_SIGNATURE with an RSASSA, RSAPSS or ECDSA
// scheme that spans every byte; anything else is taken as bare bytes.
func parseSignature(sig []byte) Signature {
	bare := Signature{Bare: true, Hash: tpm2.TPMAlgSHA256, RSA: sig}
	r := &reader{b: sig}
	alg := tpm2.TPMAlgID(r.u16("sigAlg"))
	hash := tpm2.TPMAlgID(r.u16("hash"))
	var out Signature
	switch alg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		out = Signature{Alg: alg, Hash: hash, RSA: r.tpm2b("sig")}
	case tpm2.TPMAlgECDSA:
		out = Signature{Alg: alg, Hash: hash, R: r.tpm2b("r"), S: r.tpm2b("s")}
	default:
		return bare
	}
	if r.err != nil || r.off != len(sig) {
		return bare
	}
	return out
}

// parseSignatureGoTPM decodes with go-tpm; tests compare it with parseSignature.
func parseSignatureGoTPM(sig []byte) Signature {
	bare := Signature{Bare: true, Hash: tpm2.TPMAlgSHA256, RSA: sig}
	s, err := unmarshal[tpm2.TPMTSignature](sig)
	if err != nil {
		return bare
	}
	switch s.SigAlg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		var r *tpm2.TPMSSignatureRSA
		if s.SigAlg == tpm2.TPMAlgRSASSA {
			r, err = s.Signature.RSASSA()
		} else {
			r, err = s.Signature.RSAPSS()
		}
		if err == nil && 6+len(r.Sig.Buffer) == len(sig) {
			return Signature{Alg: s.SigAlg, Hash: r.Hash, RSA: r.Sig.Buffer}
		}
	case tpm2.TPMAlgECDSA:
		e, err := s.Signature.ECDSA()
		if err == nil && 8+len(e.SignatureR.Buffer)+len(e.SignatureS.Buffer) == len(sig) {
			return Signature{Alg: s.SigAlg, Hash: e.Hash, R: e.SignatureR.Buffer, S: e.SignatureS.Buffer}
		}
	}
	return bare
}

func cryptoHash(alg tpm2.TPMAlgID) (crypto.Hash, error) {
	switch alg {
	case tpm2.TPMAlgSHA256:
		return crypto.SHA256, nil
	case tpm2.TPMAlgSHA384:
		return crypto.SHA384, nil
	case tpm2.TPMAlgSHA512:
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("unsupported hash algorithm 0x%x", uint16(alg))
}

func digest(h crypto.Hash, b []byte) []byte {
	switch h {
	case crypto.SHA384:
		d := sha512.Sum384(b)
		return d[:]
	case crypto.SHA512:
		d := sha512.Sum512(b)
		return d[:]
	}
	d := sha256.Sum256(b)
	return d[:]
}

// VerifySignature checks the quote signature with the attestation key pub
// (*rsa.PublicKey or *ecdsa.PublicKey).
func (q *Quote) VerifySignature(pub crypto.PublicKey) error {
	s := q.Signature
	h, err := cryptoHash(s.Hash)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	d := digest(h, q.Attest)
	switch k := pub.(type) {
	case *rsa.PublicKey:
		switch {
		case s.Bare, s.Alg == tpm2.TPMAlgRSASSA:
			err = rsa.VerifyPKCS1v15(k, h, d, s.RSA)
		case s.Alg == tpm2.TPMAlgRSAPSS:
			err = rsa.VerifyPSS(k, h, d, s.RSA, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		default:
			err = fmt.Errorf("signature scheme 0x%x does not fit an RSA key", uint16(s.Alg))
		}
	case *ecdsa.PublicKey:
		r, ss := s.R, s.S
		if s.Bare {
			if len(s.RSA)%2 != 0 {
				return fmt.Errorf("%w: bare ECDSA signature of odd length %d", ErrSignature, len(s.RSA))
			}
			r, ss = s.RSA[:len(s.RSA)/2], s.RSA[len(s.RSA)/2:]
		} else if s.Alg != tpm2.TPMAlgECDSA {
			return fmt.Errorf("%w: signature scheme 0x%x does not fit an ECDSA key", ErrSignature, uint16(s.Alg))
		}
		if !ecdsa.Verify(k, d, new(big.Int).SetBytes(r), new(big.Int).SetBytes(ss)) {
			err = errors.New("ECDSA verification failed")
		}
	default:
		err = fmt.Errorf("unsupported key type %T", pub)
	}
	if err != nil {
		return fmt.Errorf("%w: %v", ErrSignature, err)
	}
	return nil
}

// CheckExtraData checks that the quote's extraData equals want.
func (q *Quote) CheckExtraData(want []byte) error {
	if !bytes.Equal(q.ExtraData, want) {
		return fmt.Errorf("%w: quote has %x, want %x", ErrExtraData, q.ExtraData, want)
	}
	return nil
}

// CheckPCRs checks that values (PCR index -> value in bank) are exactly the
// PCRs the quote selects and that their digest is the quoted PCR digest.
func (q *Quote) CheckPCRs(bank tpm2.TPMAlgID, values map[int][]byte) error {
	if len(q.Selection) != 1 || q.Selection[0].Hash != bank {
		return fmt.Errorf("%w: quote selects %d banks, want exactly bank 0x%x", ErrPCRSelection, len(q.Selection), uint16(bank))
	}
	sel := q.Selection[0].PCRs
	if len(sel) != len(values) {
		return fmt.Errorf("%w: quote covers %d PCRs, %d values given", ErrPCRSelection, len(sel), len(values))
	}
	h, err := cryptoHash(q.Signature.Hash)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrPCRDigest, err)
	}
	got, err := PCRDigest(h, bank, sel, values)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, q.PCRDigest) {
		return fmt.Errorf("%w: PCR values digest to %x, quote has %x", ErrPCRDigest, got, q.PCRDigest)
	}
	return nil
}

// PCRDigest computes the digest with h over the values of the PCRs in sel,
// in ascending order, as TPM2_Quote does.
func PCRDigest(h crypto.Hash, bank tpm2.TPMAlgID, sel []int, values map[int][]byte) ([]byte, error) {
	bh, err := cryptoHash(bank)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrPCRSelection, err)
	}
	sorted := slices.Clone(sel)
	slices.Sort(sorted)
	buf := make([]byte, 0, len(sorted)*bh.Size())
	for _, i := range sorted {
		v, ok := values[i]
		if !ok {
			return nil, fmt.Errorf("%w: no value for quoted PCR %d", ErrPCRSelection, i)
		}
		if len(v) != bh.Size() {
			return nil, fmt.Errorf("%w: PCR %d value is %d bytes, want %d", ErrPCRSelection, i, len(v), bh.Size())
		}
		buf = append(buf, v...)
	}
	return digest(h, buf), nil
}
