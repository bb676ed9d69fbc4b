package enroll

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"net/http"
	"strconv"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

// HTTP paths of the enrollment API (POST, JSON in and out).
const (
	PathNonce  = "/v1/enroll/nonce"
	PathEnroll = "/v1/enroll"
)

// Limits of the protocol.
const (
	// NonceSize is the size of an enrollment nonce.
	NonceSize = 32
	// BindingSize is the size of Binding's result, the quote's extraData.
	BindingSize = sha256.Size
	// MaxEvidenceSize bounds the evidence bundle in a request (the bundle
	// parser's own limit, evidence.MaxBundleSize).
	MaxEvidenceSize = 256 << 10
	// MaxRequestSize bounds a whole encoded enrollment request.
	MaxRequestSize = MaxEvidenceSize + 4<<10
	// MaxNonceRequestSize bounds an encoded nonce request.
	MaxNonceRequestSize = 1 << 10
	// MaxResponseSize bounds an answer the client reads.
	MaxResponseSize = 64 << 10
)

// Refusal codes, carried in Refusal.Code. Enrollment is keyguard's other
// release (of bus credentials instead of a secret): where a refusal means
// the same it has the key release protocol's code.
const (
	// CodeBadRequest: the request is malformed (the message says what).
	CodeBadRequest = keyrelease.CodeBadRequest
	// CodeBadNonce: the nonce is unknown, expired, already used, issued for
	// another VM or for another purpose.
	CodeBadNonce = keyrelease.CodeBadNonce
	// CodeUnknownVM: ARM does not know the VM (or its vmId) yet: retry.
	CodeUnknownVM = "unknown_vm"
	// CodeNotTrusted: the VM is retired.
	CodeNotTrusted = keyrelease.CodeNotTrusted
	// CodeRevoked: the VM's credentials were revoked and an operator has
	// not restored it since.
	CodeRevoked = keyrelease.CodeRevoked
	// CodeWrongVM: the evidence comes from another VM than the one named.
	CodeWrongVM = keyrelease.CodeWrongVM
	// CodeBindingMismatch: the quote does not bind the nonce and key.
	CodeBindingMismatch = keyrelease.CodeBindingMismatch
	// CodeEvidenceRejected: the evidence is not genuine or fails policy.
	CodeEvidenceRejected = keyrelease.CodeEvidenceRejected
	// CodeRateLimited: too many requests from this source or for this VM.
	CodeRateLimited = keyrelease.CodeRateLimited
	// CodeUnavailable: keyguard cannot decide now (storage, policy not
	// read yet): retry later.
	CodeUnavailable = keyrelease.CodeUnavailable
)

// NonceRequest asks for an enrollment nonce for VMKey, and NonceResponse
// carries it: the key release protocol's, whose shapes they share (the
// nonces are kept apart by keyguard, each usable for its own exchange).
type (
	NonceRequest  = keyrelease.NonceRequest
	NonceResponse = keyrelease.NonceResponse
)

// Request asks for a user JWT for PublicKey as the agent of VMKey.
type Request struct {
	VMKey string `json:"vm_key"`
	// Nonce is the nonce from NonceResponse.
	Nonce []byte `json:"nonce"`
	// PublicKey is the agent's public nkey (a user key, "U...").
	PublicKey string `json:"public_key"`
	// Evidence is a vigil.evidence/v1 bundle whose "nonce" is Nonce and
	// whose TPM quote's extraData is Binding(VMKey, Nonce, PublicKey).
	Evidence json.RawMessage `json:"evidence"`
}

// Response carries the agent's user JWT.
type Response struct {
	VMKey     string    `json:"vm_key"`
	JWT       string    `json:"jwt"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Refusal is keyguard's answer when it does not enroll: an HTTP status, a
// code (one of the Code* constants) and a message. RetryAfter is set for
// CodeRateLimited and CodeUnavailable.
type Refusal struct {
	Status     int           `json:"-"`
	Code       string        `json:"code"`
	Message    string        `json:"message"`
	RetryAfter time.Duration `json:"-"`
}

func (r *Refusal) Error() string {
	return fmt.Sprintf("enroll: refused (%s): %s", r.Code, r.Message)
}

// Refuse makes a refusal with the HTTP status that fits code.
func Refuse(code, format string, args ...any) *Refusal {
	return &Refusal{Status: StatusOf(code), Code: code, Message: fmt.Sprintf(format, args...)}
}

// StatusOf is the HTTP status of a refusal code.
func StatusOf(code string) int {
	switch code {
	case CodeBadRequest:
		return http.StatusBadRequest
	case CodeRateLimited:
		return http.StatusTooManyRequests
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeUnknownVM:
		return http.StatusNotFound
	default:
		return http.StatusForbidden
	}
}

// RefusalCode returns the code of a refusal in err's chain, "" when err
// is not a refusal.
func RefusalCode(err error) string {
	var r *Refusal
	if errors.As(err, &r) {
		return r.Code
	}
	return ""
}

// WriteRefusal writes r as the HTTP answer, with Retry-After when set.
func WriteRefusal(w http.ResponseWriter, r *Refusal) {
	if r.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((r.RetryAfter+time.Second-1)/time.Second)))
	}
	status := r.Status
	if status == 0 {
		status = StatusOf(r.Code)
	}
	WriteJSON(w, status, r)
}

// WriteJSON writes v as a JSON answer with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// ErrInvalidRequest is wrapped by every validation error of this package.
var ErrInvalidRequest = errors.New("enroll: invalid request")

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidRequest, fmt.Sprintf(format, args...))
}

// ParseNonceRequest decodes and validates a nonce request.
func ParseNonceRequest(data []byte) (NonceRequest, error) {
	var r NonceRequest
	if len(data) > MaxNonceRequestSize {
		return r, invalid("nonce request is %d bytes, over the limit of %d", len(data), MaxNonceRequestSize)
	}
	if err := strictUnmarshal(data, &r); err != nil {
		return r, invalid("nonce request: %v", err)
	}
	if err := r.Validate(); err != nil {
		return r, fmt.Errorf("%w: %w", ErrInvalidRequest, err)
	}
	return r, nil
}

// Validate checks every field of a request, without looking into the
// evidence beyond its size and its being a JSON object.
func (r Request) Validate() error {
	ev := bytes.TrimSpace(r.Evidence)
	switch {
	case !events.ValidVMKey(r.VMKey):
		return invalid("vm_key %q is not a VM key", clip(r.VMKey))
	case len(r.Nonce) != NonceSize:
		return invalid("nonce is %d bytes, want %d", len(r.Nonce), NonceSize)
	case !nkeys.IsValidPublicUserKey(r.PublicKey):
		return invalid("public_key %q is not a public nkey of a user", clip(r.PublicKey))
	case len(ev) == 0 || bytes.Equal(ev, []byte("null")):
		return invalid("missing evidence")
	case len(r.Evidence) > MaxEvidenceSize:
		return invalid("evidence is %d bytes, over the limit of %d", len(r.Evidence), MaxEvidenceSize)
	case ev[0] != '{':
		return invalid("evidence is not a JSON object")
	}
	return nil
}

// ParseRequest decodes and validates an enrollment request.
func ParseRequest(data []byte) (Request, error) {
	var r Request
	if len(data) > MaxRequestSize {
		return r, invalid("enrollment request is %d bytes, over the limit of %d", len(data), MaxRequestSize)
	}
	if err := strictUnmarshal(data, &r); err != nil {
		return r, invalid("enrollment request: %v", err)
	}
	return r, r.Validate()
}

// strictUnmarshal decodes one JSON value with no unknown fields and
// nothing after it.
func strictUnmarshal(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON object")
	}
	return nil
}

// bindingLabel separates the enrollment binding from every other value a
// quote carries (challenge bindings, key release bindings).
const bindingLabel = "vigil.enroll.v1 binding"

// Binding is the TPM quote extraData that ties an enrollment to one VM, one
// nonce and one public nkey:
//
//	SHA-256("vigil.enroll.v1 binding" || 0x00 || u32(len(vm)) || vm
//	        || u32(len(nonce)) || nonce || u32(len(pub)) || pub)
//
// with big-endian lengths.
func Binding(vm string, nonce []byte, userPub string) []byte {
	h := sha256.New()
	h.Write([]byte(bindingLabel))
	h.Write([]byte{0})
	writeLP(h, []byte(vm))
	writeLP(h, nonce)
	writeLP(h, []byte(userPub))
	return h.Sum(nil)
}

func writeLP(h hash.Hash, p []byte) {
	var n [4]byte
	binary.BigEndian.PutUint32(n[:], uint32(len(p)))
	h.Write(n[:])
	h.Write(p)
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
