package keyrelease

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// The release API (request/reply, no stream) is served on each VM's own
// NonceSubject and ReleaseSubject only, which in operator mode only that
// VM's agent may publish on; keyguard refuses (CodeWrongVM) a request
// there for another VM.

// NonceSubject is vigil.keyguard.nonce.<vm>.
func NonceSubject(vm string) string { return events.KeyguardNonceSubject(vm) }

// ReleaseSubject is vigil.keyguard.release.<vm>.
func ReleaseSubject(vm string) string { return events.KeyguardReleaseSubject(vm) }

// Limits of the protocol.
const (
	// NonceSize is the size of a release nonce.
	NonceSize = 32
	// BindingSize is the size of Binding's result, the quote's extraData.
	BindingSize = 32
	// MaxKeyNameLen bounds a key name.
	MaxKeyNameLen = 127
	// MaxPublicKeySize bounds an ephemeral public key (ML-KEM-1024 hybrids
	// are the largest at 1665 bytes).
	MaxPublicKeySize = 2048
	// MaxEvidenceSize bounds the evidence bundle in a release request (the
	// bundle parser's own limit, evidence.MaxBundleSize).
	MaxEvidenceSize = 256 << 10
	// MaxRequestSize bounds a whole encoded release request.
	MaxRequestSize = MaxEvidenceSize + 16<<10
)

// Refusal codes, carried as bus.ReplyError.Code.
const (
	// CodeBadRequest: the request is malformed (the message says what).
	CodeBadRequest = "bad_request"
	// CodeBadNonce: the nonce is unknown, expired, already used, or was
	// issued for another VM.
	CodeBadNonce = "bad_nonce"
	// CodeNotTrusted: the VM's attestation status is not trusted or warning.
	CodeNotTrusted = "not_trusted"
	// CodeNoGrant: the VM has no grant for the key.
	CodeNoGrant = "no_grant"
	// CodeRevoked: the VM's grant for the key is revoked.
	CodeRevoked = "revoked"
	// CodeSuspended: the VM's grant is suspended (the VM was stopped).
	CodeSuspended = "suspended"
	// CodeWrongVM: the evidence comes from another VM than the one named.
	CodeWrongVM = "wrong_vm"
	// CodeBindingMismatch: the quote's extraData does not bind the nonce and
	// the ephemeral public key.
	CodeBindingMismatch = "binding_mismatch"
	// CodeEvidenceRejected: the evidence is not genuine or fails policy.
	CodeEvidenceRejected = "evidence_rejected"
	// CodeUnknownKey: no secret of that name exists.
	CodeUnknownKey = "unknown_key"
	// CodeUnavailable: keyguard cannot decide right now (storage down);
	// retry later.
	CodeUnavailable = "unavailable"
	// CodeRateLimited: too many nonce requests from this requester or for
	// this VM, or the VM holds as many unused nonces as it may; retry later.
	CodeRateLimited = "rate_limited"
)

// NonceRequest asks for a release nonce for VMKey.
type NonceRequest struct {
	VMKey string `json:"vm_key"`
}

// NonceResponse carries a fresh single-use nonce.
type NonceResponse struct {
	Nonce     []byte    `json:"nonce"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ReleaseRequest asks for the secret KeyName for VMKey.
type ReleaseRequest struct {
	VMKey   string `json:"vm_key"`
	KeyName string `json:"key_name"`
	// Nonce is the nonce from NonceResponse.
	Nonce []byte `json:"nonce"`
	// Suite is the HPKE suite the answer is sealed with.
	Suite Suite `json:"suite"`
	// PublicKey is the ephemeral HPKE public key, serialized as the KEM
	// defines (RFC 9180 SerializePublicKey).
	PublicKey []byte `json:"public_key"`
	// Evidence is a vigil.evidence/v1 bundle whose TPM quote's extraData is
	// Binding(Nonce, Suite, PublicKey).
	Evidence json.RawMessage `json:"evidence"`
}

// ReleaseResponse carries the sealed secret.
type ReleaseResponse struct {
	VMKey   string `json:"vm_key"`
	KeyName string `json:"key_name"`
	// Version is the version of the secret that was released.
	Version uint64 `json:"version,omitempty"`
	Suite   Suite  `json:"suite"`
	// Sealed is the HPKE encapsulated key followed by the ciphertext of the
	// secret (the output of hpke.Seal).
	Sealed     []byte    `json:"sealed"`
	ReleasedAt time.Time `json:"released_at"`
}

// ErrInvalidRequest is wrapped by every validation error of this package.
var ErrInvalidRequest = errors.New("keyrelease: invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// ValidKeyName reports whether name is an acceptable key name: 1 to
// MaxKeyNameLen characters from [A-Za-z0-9_-], not starting with '-' or '_'.
// Key names appear in KV keys, subjects and Azure key names.
func ValidKeyName(name string) bool {
	if len(name) == 0 || len(name) > MaxKeyNameLen || name[0] == '-' || name[0] == '_' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// Validate checks a nonce request.
func (r NonceRequest) Validate() error {
	if !events.ValidVMKey(r.VMKey) {
		return invalid("vm_key %q is not a VM key", clip(r.VMKey))
	}
	return nil
}

// ParseNonceRequest decodes and validates a nonce request.
func ParseNonceRequest(data []byte) (NonceRequest, error) {
	var r NonceRequest
	if len(data) > 4<<10 {
		return r, invalid("nonce request is %d bytes, over the limit of %d", len(data), 4<<10)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, invalid("nonce request: %v", err)
	}
	return r, r.Validate()
}

// Validate checks every field of a release request, without looking into
// the evidence beyond its size and its being a JSON object.
func (r ReleaseRequest) Validate() error {
	switch {
	case !events.ValidVMKey(r.VMKey):
		return invalid("vm_key %q is not a VM key", clip(r.VMKey))
	case !ValidKeyName(r.KeyName):
		return invalid("key_name %q: want 1 to %d characters of [A-Za-z0-9_-]", clip(r.KeyName), MaxKeyNameLen)
	case len(r.Nonce) != NonceSize:
		return invalid("nonce is %d bytes, want %d", len(r.Nonce), NonceSize)
	case len(r.PublicKey) == 0:
		return invalid("missing public_key")
	case len(r.PublicKey) > MaxPublicKeySize:
		return invalid("public_key is %d bytes, over the limit of %d", len(r.PublicKey), MaxPublicKeySize)
	case len(bytes.TrimSpace(r.Evidence)) == 0 || bytes.Equal(bytes.TrimSpace(r.Evidence), []byte("null")):
		return invalid("missing evidence")
	case len(r.Evidence) > MaxEvidenceSize:
		return invalid("evidence is %d bytes, over the limit of %d", len(r.Evidence), MaxEvidenceSize)
	}
	if b := bytes.TrimLeft(r.Evidence, " \t\r\n"); len(b) == 0 || b[0] != '{' {
		return invalid("evidence is not a JSON object")
	}
	if err := r.Suite.Validate(); err != nil {
		return err
	}
	if _, err := r.Suite.ParsePublicKey(r.PublicKey); err != nil {
		return err
	}
	return nil
}

// ParseReleaseRequest decodes and validates a release request.
func ParseReleaseRequest(data []byte) (ReleaseRequest, error) {
	var r ReleaseRequest
	if len(data) > MaxRequestSize {
		return r, invalid("release request is %d bytes, over the limit of %d", len(data), MaxRequestSize)
	}
	if err := json.Unmarshal(data, &r); err != nil {
		return r, invalid("release request: %v", err)
	}
	return r, r.Validate()
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
