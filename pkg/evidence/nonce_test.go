package evidence

import "testing"

func TestNewNonce(t *testing.T) {
	n1, n2 := NewNonce(), NewNonce()
	if len(n1) != NonceSize || string(n1) == string(n2) {
		t.Fatal("nonces")
	}
}
