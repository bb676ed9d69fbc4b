package sink

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks (https://www.standardwebhooks.com/) headers and limits.
const (
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"

	// SecretPrefix starts every webhook secret.
	SecretPrefix = "whsec_"
	// MaxWebhookSecrets is how many secrets sign at once (a rotation).
	MaxWebhookSecrets = 2
	// DefaultTolerance is how far a webhook-timestamp may be from now in
	// Verify's callers' default.
	DefaultTolerance = 5 * time.Minute

	minSecretBytes = 24
	maxSecretBytes = 64
	maxSignatures  = 16   // in one webhook-signature header, for Verify
	maxSigHeader   = 4096 // bytes of webhook-signature Verify looks at
)

// Verify errors.
var (
	ErrNoSignatureHeaders = errors.New("webhook: missing webhook-id, webhook-timestamp or webhook-signature")
	ErrBadTimestamp       = errors.New("webhook: invalid webhook-timestamp")
	ErrTimestampTolerance = errors.New("webhook: webhook-timestamp outside the tolerance")
	ErrNoMatchingSig      = errors.New("webhook: no matching signature")
	ErrBadSecret          = errors.New("webhook: invalid secret")
)

// NewWebhookSecret returns a fresh secret: "whsec_" and the base64 of 32
// random bytes.
func NewWebhookSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return SecretPrefix + base64.StdEncoding.EncodeToString(b)
}

// ParseWebhookSecret decodes a "whsec_" secret into its key: base64 of 24
// to 64 bytes. The error never contains the secret.
func ParseWebhookSecret(s string) ([]byte, error) {
	b64, ok := strings.CutPrefix(s, SecretPrefix)
	if !ok {
		return nil, fmt.Errorf("%w: it must start with %q", ErrBadSecret, SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64 after %q", ErrBadSecret, SecretPrefix)
	}
	if len(key) < minSecretBytes || len(key) > maxSecretBytes {
		return nil, fmt.Errorf("%w: %d bytes (want %d to %d)", ErrBadSecret, len(key), minSecretBytes, maxSecretBytes)
	}
	return key, nil
}

// signer signs with one or two keys.
type signer struct{ keys [][]byte }

func newSigner(secrets []string) (signer, error) {
	if len(secrets) > MaxWebhookSecrets {
		return signer{}, fmt.Errorf("%w: %d webhook secrets (at most %d, during a rotation)", ErrInvalidSpec, len(secrets), MaxWebhookSecrets)
	}
	var s signer
	for i, sec := range secrets {
		k, err := ParseWebhookSecret(sec)
		if err != nil {
			return signer{}, fmt.Errorf("%w: webhook secret %d: %w", ErrInvalidSpec, i+1, err)
		}
		s.keys = append(s.keys, k)
	}
	return s, nil
}

// sign returns the webhook-signature value: "v1,<base64>" per key,
// space-separated.
func (s signer) sign(id string, ts int64, body []byte) string {
	var b strings.Builder
	for i, k := range s.keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString("v1,")
		b.WriteString(base64.StdEncoding.EncodeToString(mac(k, id, ts, body)))
	}
	return b.String()
}

func mac(key []byte, id string, ts int64, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write(strconv.AppendInt(nil, ts, 10))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Sign returns the Standard Webhooks webhook-signature header value of body
// sent with webhook-id id at ts: "v1,<base64 HMAC-SHA256 of id.ts.body>"
// for each secret, space-separated.
func Sign(secrets []string, id string, ts time.Time, body []byte) (string, error) {
	if len(secrets) == 0 {
		return "", fmt.Errorf("%w: no secret", ErrBadSecret)
	}
	s, err := newSigner(secrets)
	if err != nil {
		return "", err
	}
	return s.sign(id, ts.Unix(), body), nil
}

// Verify checks a Standard Webhooks signature: header's webhook-id,
// webhook-timestamp (within tolerance of now; tolerance <= 0 means
// DefaultTolerance) and webhook-signature, one of whose v1 signatures must
// match body under one of secrets ("whsec_..."). It is what a receiver
// (vigil alerts receive) runs on every request.
func Verify(secrets []string, header http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if len(secrets) == 0 {
		return fmt.Errorf("%w: no secret to verify with", ErrBadSecret)
	}
	keys := make([][]byte, 0, len(secrets))
	for i, s := range secrets {
		k, err := ParseWebhookSecret(s)
		if err != nil {
			return fmt.Errorf("secret %d: %w", i+1, err)
		}
		keys = append(keys, k)
	}
	id := header.Get(HeaderWebhookID)
	tsv := header.Get(HeaderWebhookTimestamp)
	sigs := header.Get(HeaderWebhookSignature)
	if id == "" || tsv == "" || sigs == "" {
		return ErrNoSignatureHeaders
	}
	if !isDigits(tsv) || len(tsv) > 12 {
		return ErrBadTimestamp
	}
	ts, err := strconv.ParseInt(tsv, 10, 64)
	if err != nil {
		return ErrBadTimestamp
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	tol := int64(tolerance / time.Second)
	if d := now.Unix() - ts; d > tol || d < -tol {
		return ErrTimestampTolerance
	}
	if len(sigs) > maxSigHeader {
		sigs = sigs[:maxSigHeader]
	}
	want := make([][]byte, len(keys))
	for i, k := range keys {
		want[i] = mac(k, id, ts, body)
	}
	for n, f := range strings.Fields(sigs) {
		if n >= maxSignatures {
			break
		}
		ver, b64, ok := strings.Cut(f, ",")
		if !ok || ver != "v1" {
			continue // other schemes (v1a, ...) are not ours
		}
		got, err := base64.StdEncoding.Strict().DecodeString(b64)
		if err != nil || len(got) != sha256.Size {
			continue
		}
		for _, w := range want {
			if hmac.Equal(got, w) {
				return nil
			}
		}
	}
	return ErrNoMatchingSig
}
