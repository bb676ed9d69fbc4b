package events

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// VMKeyLen is the length of a VM key.
const VMKeyLen = 26

var vmKeyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// VMKey returns the VM key of an ARM resource ID: the first 26 characters of
// the lower-case, unpadded base32 encoding of SHA-256 of the lower-cased
// resource ID. It is a valid NATS subject token. ARM resource IDs are case
// insensitive, so IDs differing only in case share a key.
func VMKey(resourceID string) string {
	sum := sha256.Sum256([]byte(strings.ToLower(resourceID)))
	return vmKeyEncoding.EncodeToString(sum[:])[:VMKeyLen]
}

// ValidVMKey reports whether s has the shape of a VM key.
func ValidVMKey(s string) bool {
	if len(s) != VMKeyLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}
