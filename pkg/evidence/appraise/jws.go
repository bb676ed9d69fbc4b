package appraise

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
)

// VerdictSigner signs verdicts as ES256 compact JWS.
type VerdictSigner struct {
	Key   *ecdsa.PrivateKey // P-256
	KeyID string
}

type jwsHeader struct {
	Alg string `json:"alg"`
	Typ string `json:"typ,omitempty"`
	Kid string `json:"kid,omitempty"`
}

const jwsType = "vigil-verdict+jws"

// Sign sets v.JWS to a compact JWS over the verdict without its jws field.
func (s *VerdictSigner) Sign(v *events.Verdict) error {
	if s.Key == nil || s.Key.Curve != elliptic.P256() {
		return errors.New("verdict signer: key must be ECDSA P-256")
	}
	c := *v
	c.JWS = ""
	payload, err := json.Marshal(c)
	if err != nil {
		return err
	}
	hdr, err := json.Marshal(jwsHeader{Alg: "ES256", Typ: jwsType, Kid: s.KeyID})
	if err != nil {
		return err
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString(hdr) + "." + enc.EncodeToString(payload)
	d := sha256.Sum256([]byte(input))
	r, ss, err := ecdsa.Sign(rand.Reader, s.Key, d[:])
	if err != nil {
		return err
	}
	sig := append(r.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	v.JWS = input + "." + enc.EncodeToString(sig)
	return nil
}

// VerifyVerdictJWS checks an ES256 compact JWS made by VerdictSigner and
// returns the verdict it carries (with JWS set to jws).
func VerifyVerdictJWS(jws string, pub *ecdsa.PublicKey) (events.Verdict, error) {
	var v events.Verdict
	parts := strings.Split(jws, ".")
	if len(parts) != 3 {
		return v, errors.New("verdict JWS: not three dot-separated parts")
	}
	enc := base64.RawURLEncoding
	hb, err := enc.DecodeString(parts[0])
	if err != nil {
		return v, fmt.Errorf("verdict JWS header: %w", err)
	}
	var h jwsHeader
	if err := json.Unmarshal(hb, &h); err != nil {
		return v, fmt.Errorf("verdict JWS header: %w", err)
	}
	if h.Alg != "ES256" {
		return v, fmt.Errorf("verdict JWS: alg %q, want ES256", h.Alg)
	}
	sig, err := enc.DecodeString(parts[2])
	if err != nil || len(sig) != 64 {
		return v, errors.New("verdict JWS: signature is not 64 bytes of base64url")
	}
	d := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if !ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		return v, errors.New("verdict JWS: signature invalid")
	}
	payload, err := enc.DecodeString(parts[1])
	if err != nil {
		return v, fmt.Errorf("verdict JWS payload: %w", err)
	}
	if err := json.Unmarshal(payload, &v); err != nil {
		return v, fmt.Errorf("verdict JWS payload: %w", err)
	}
	v.JWS = jws
	return v, nil
}
