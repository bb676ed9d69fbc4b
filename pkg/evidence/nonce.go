package evidence

import "crypto/rand"

// NonceSize is the size of nonces made by NewNonce.
const NonceSize = 32

// NewNonce returns a fresh random challenge nonce.
func NewNonce() []byte {
	n := make([]byte, NonceSize)
	_, _ = rand.Read(n)
	return n
}
