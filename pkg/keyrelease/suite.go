package keyrelease

import (
	"crypto/hpke"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
)

// Suite names an HPKE ciphersuite by its RFC 9180 / draft-ietf-hpke-pq
// identifiers.
type Suite struct {
	KEM  uint16 `json:"kem"`
	KDF  uint16 `json:"kdf"`
	AEAD uint16 `json:"aead"`
}

// HPKE identifiers used by the suites below.
const (
	KEMX25519         uint16 = 0x0020 // DHKEM(X25519, HKDF-SHA256)
	KEMP256           uint16 = 0x0010 // DHKEM(P-256, HKDF-SHA256)
	KEMMLKEM768X25519 uint16 = 0x647a // MLKEM768-X25519 (X-Wing)
	KDFHKDFSHA256     uint16 = 0x0001
	AEADAES256GCM     uint16 = 0x0002
	aeadExportOnly    uint16 = 0xffff
)

// DefaultSuite is the post-quantum hybrid X-Wing KEM with HKDF-SHA256 and
// AES-256-GCM: the secret stays confidential even against a future quantum
// adversary recording the exchange.
var DefaultSuite = Suite{KEM: KEMMLKEM768X25519, KDF: KDFHKDFSHA256, AEAD: AEADAES256GCM}

// ClassicSuite is DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
var ClassicSuite = Suite{KEM: KEMX25519, KDF: KDFHKDFSHA256, AEAD: AEADAES256GCM}

func (s Suite) String() string {
	return fmt.Sprintf("kem 0x%04x kdf 0x%04x aead 0x%04x", s.KEM, s.KDF, s.AEAD)
}

// Validate checks that every component is implemented and that the AEAD can
// encrypt (not export-only).
func (s Suite) Validate() error {
	_, _, _, err := s.components()
	return err
}

func (s Suite) components() (hpke.KEM, hpke.KDF, hpke.AEAD, error) {
	kem, err := hpke.NewKEM(s.KEM)
	if err != nil {
		return nil, nil, nil, invalid("suite: KEM 0x%04x is not supported", s.KEM)
	}
	kdf, err := hpke.NewKDF(s.KDF)
	if err != nil {
		return nil, nil, nil, invalid("suite: KDF 0x%04x is not supported", s.KDF)
	}
	if s.AEAD == aeadExportOnly {
		return nil, nil, nil, invalid("suite: the export-only AEAD cannot carry a secret")
	}
	aead, err := hpke.NewAEAD(s.AEAD)
	if err != nil {
		return nil, nil, nil, invalid("suite: AEAD 0x%04x is not supported", s.AEAD)
	}
	return kem, kdf, aead, nil
}

// GenerateKey creates an ephemeral key pair for s and returns the private
// key and the serialized public key to put in a ReleaseRequest.
func (s Suite) GenerateKey() (hpke.PrivateKey, []byte, error) {
	kem, _, _, err := s.components()
	if err != nil {
		return nil, nil, err
	}
	priv, err := kem.GenerateKey()
	if err != nil {
		return nil, nil, fmt.Errorf("keyrelease: generate %s key: %w", s, err)
	}
	return priv, priv.PublicKey().Bytes(), nil
}

// ParsePublicKey deserializes a public key of s's KEM.
func (s Suite) ParsePublicKey(b []byte) (hpke.PublicKey, error) {
	kem, _, _, err := s.components()
	if err != nil {
		return nil, err
	}
	pk, err := kem.NewPublicKey(b)
	if err != nil {
		return nil, invalid("public_key is not a valid key for KEM 0x%04x: %v", s.KEM, err)
	}
	return pk, nil
}

// Seal encrypts secret to the serialized public key pub under info and
// returns the encapsulated key followed by the ciphertext.
func (s Suite) Seal(pub, info, secret []byte) ([]byte, error) {
	_, kdf, aead, err := s.components()
	if err != nil {
		return nil, err
	}
	pk, err := s.ParsePublicKey(pub)
	if err != nil {
		return nil, err
	}
	out, err := hpke.Seal(pk, kdf, aead, info, secret)
	if err != nil {
		return nil, fmt.Errorf("keyrelease: seal: %w", err)
	}
	return out, nil
}

// Open decrypts the output of Seal with the private key.
func (s Suite) Open(priv hpke.PrivateKey, info, sealed []byte) ([]byte, error) {
	_, kdf, aead, err := s.components()
	if err != nil {
		return nil, err
	}
	if priv.KEM().ID() != s.KEM {
		return nil, fmt.Errorf("keyrelease: open: private key is for KEM 0x%04x, suite says 0x%04x", priv.KEM().ID(), s.KEM)
	}
	pt, err := hpke.Open(priv, kdf, aead, info, sealed)
	if err != nil {
		return nil, fmt.Errorf("keyrelease: open: %w", err)
	}
	return pt, nil
}

// Domain separation labels.
const (
	bindingLabel = "vigil.keyrelease.v1 binding"
	infoLabel    = "vigil.keyrelease.v1 secret"
)

// Binding is the TPM quote extraData that ties a release to one nonce and
// one ephemeral public key:
//
//	SHA-256("vigil.keyrelease.v1 binding" || 0x00 || u16(kem) || u16(kdf) || u16(aead)
//	        || u32(len(nonce)) || nonce || u32(len(pub)) || pub)
//
// with big-endian integers. It fits the TPM's qualifying data (at most 64
// bytes).
func Binding(nonce []byte, s Suite, pub []byte) []byte {
	h := sha256.New()
	h.Write([]byte(bindingLabel))
	h.Write([]byte{0})
	writeSuite(h, s)
	writeLP(h, nonce)
	writeLP(h, pub)
	return h.Sum(nil)
}

// Info is the HPKE info of a sealed secret: it names the VM, the key and the
// nonce, so that a sealed answer cannot pass for another one.
func Info(vmKey, keyName string, nonce []byte) []byte {
	b := []byte(infoLabel)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(vmKey)))
	b = append(b, vmKey...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(keyName)))
	b = append(b, keyName...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(nonce)))
	return append(b, nonce...)
}

func writeSuite(h hash.Hash, s Suite) {
	var b [6]byte
	binary.BigEndian.PutUint16(b[0:], s.KEM)
	binary.BigEndian.PutUint16(b[2:], s.KDF)
	binary.BigEndian.PutUint16(b[4:], s.AEAD)
	h.Write(b[:])
}

func writeLP(h hash.Hash, p []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(p)))
	h.Write(n[:])
	h.Write(p)
}
