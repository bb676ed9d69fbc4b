package tpmquote

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// Params describe a quote to build in software.
type Params struct {
	ExtraData       []byte
	Bank            tpm2.TPMAlgID  // PCR bank; zero means SHA-256
	PCRs            map[int][]byte // the values of every PCR to select
	QualifiedSigner []byte         // name of the signing key
	Clock           uint64
	ResetCount      uint32
	RestartCount    uint32
	FirmwareVersion uint64
}

// Build encodes a TPMS_ATTEST quote over p.PCRs with a SHA-256 PCR digest,
// the encoding a TPM produces for TPM2_Quote with a SHA-256 signing scheme.
func Build(p Params) ([]byte, error) {
	bank := p.Bank
	if bank == 0 {
		bank = tpm2.TPMAlgSHA256
	}
	if len(p.ExtraData) > 64 {
		return nil, fmt.Errorf("tpmquote: extraData of %d bytes exceeds 64", len(p.ExtraData))
	}
	sel := make([]int, 0, len(p.PCRs))
	mask := make([]byte, 3)
	for i := range p.PCRs {
		if i < 0 || i >= NumPCRs {
			return nil, fmt.Errorf("tpmquote: PCR index %d out of range", i)
		}
		sel = append(sel, i)
		mask[i/8] |= 1 << (i % 8)
	}
	slices.Sort(sel)
	d, err := PCRDigest(crypto.SHA256, bank, sel, p.PCRs)
	if err != nil {
		return nil, err
	}
	a := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: p.QualifiedSigner},
		ExtraData:       tpm2.TPM2BData{Buffer: p.ExtraData},
		ClockInfo: tpm2.TPMSClockInfo{
			Clock: p.Clock, ResetCount: p.ResetCount, RestartCount: p.RestartCount, Safe: true,
		},
		FirmwareVersion: p.FirmwareVersion,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: bank, PCRSelect: mask}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: d},
		}),
	}
	return tpm2.Marshal(&a), nil
}

// Sign signs attest with key (RSA: RSASSA-PKCS1-v1_5, ECDSA: r||s, both
// SHA-256). With bare it returns the signature bytes alone, as Azure's
// samples carry them; otherwise a TPMT_SIGNATURE.
func Sign(attest []byte, key crypto.Signer, bare bool) ([]byte, error) {
	d := sha256.Sum256(attest)
	switch k := key.(type) {
	case *rsa.PrivateKey:
		sig, err := rsa.SignPKCS1v15(rand.Reader, k, crypto.SHA256, d[:])
		if err != nil {
			return nil, err
		}
		if bare {
			return sig, nil
		}
		s := tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgRSASSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgRSASSA, &tpm2.TPMSSignatureRSA{
				Hash: tpm2.TPMAlgSHA256, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: sig},
			}),
		}
		return tpm2.Marshal(&s), nil
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, d[:])
		if err != nil {
			return nil, err
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		rb, sb := r.FillBytes(make([]byte, size)), s.FillBytes(make([]byte, size))
		if bare {
			return append(rb, sb...), nil
		}
		ts := tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: rb}, SignatureS: tpm2.TPM2BECCParameter{Buffer: sb},
			}),
		}
		return tpm2.Marshal(&ts), nil
	}
	return nil, fmt.Errorf("tpmquote: unsupported signing key %T", key)
}
