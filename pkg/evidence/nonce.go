package evidence

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
)

// NonceSize is the size of nonces made by NewNonce.
const NonceSize = 32

// NewNonce returns a fresh random challenge nonce.
func NewNonce() []byte {
	n := make([]byte, NonceSize)
	_, _ = rand.Read(n)
	return n
}

// BindExtraData is the TPM quote extraData that binds a nonce and a public
// key (e.g. an ephemeral key for key release):
//
//	SHA-256("vigil.bind.v1" || 0x00 || len(nonce) as uint16 BE || nonce || pub)
//
// The agent quotes over it; the verifier passes it as Expect.ExtraData
// together with Expect.Nonce.
func BindExtraData(nonce, pub []byte) []byte {
	h := sha256.New()
	h.Write([]byte("vigil.bind.v1\x00"))
	var l [2]byte
	binary.BigEndian.PutUint16(l[:], uint16(len(nonce)))
	h.Write(l[:])
	h.Write(nonce)
	h.Write(pub)
	return h.Sum(nil)
}
