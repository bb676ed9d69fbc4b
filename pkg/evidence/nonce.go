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

// challengeLabel separates attestation challenges from every other value a
// Vigil agent has its vTPM quote (keyrelease.Binding uses
// "vigil.keyrelease.v1 binding").
const challengeLabel = "vigil.attest.v1 challenge"

// ChallengeBinding is the TPM quote extraData of Vigil's answer to an
// attestation challenge with nonce:
//
//	SHA-256("vigil.attest.v1 challenge" || 0x00 || u32(len(nonce)) || nonce)
//
// with a big-endian length. The agent never quotes a caller's bytes as
// they are: whoever may send it a challenge could otherwise choose the
// nonce to be another protocol's binding (a key release's) and obtain a
// quote that protocol accepts. Each protocol hashes its own label, so a
// quote answers exactly one of them.
func ChallengeBinding(nonce []byte) []byte {
	h := sha256.New()
	h.Write([]byte(challengeLabel))
	var b [5]byte
	binary.BigEndian.PutUint32(b[1:], uint32(len(nonce)))
	h.Write(b[:])
	h.Write(nonce)
	return h.Sum(nil)
}
