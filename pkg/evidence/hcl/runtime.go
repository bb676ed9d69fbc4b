package hcl

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
)

// Key IDs of the runtime data keys.
const (
	KidAK = "HCLAkPub" // attestation key: signs TPM quotes
	KidEK = "HCLEkPub" // endorsement key
)

// ErrKeyNotFound is returned when the runtime data has no key with the asked kid.
var ErrKeyNotFound = errors.New("hcl: key not found in runtime data")

// RuntimeData is the parsed runtime data JSON.
type RuntimeData struct {
	Keys            []JWK           `json:"keys"`
	VMConfiguration VMConfiguration `json:"vm-configuration"`
	UserData        string          `json:"user-data,omitempty"`
}

// JWK is a public JSON Web Key as the paravisor writes it.
type JWK struct {
	Kid    string   `json:"kid"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"key_ops,omitempty"`
	N      string   `json:"n,omitempty"`
	E      string   `json:"e,omitempty"`
	Crv    string   `json:"crv,omitempty"`
	X      string   `json:"x,omitempty"`
	Y      string   `json:"y,omitempty"`
}

// VMConfiguration is the "vm-configuration" object. Booleans are pointers so
// that "absent" and "false" differ.
type VMConfiguration struct {
	ConsoleEnabled     *bool  `json:"console-enabled,omitempty"`
	SecureBoot         *bool  `json:"secure-boot,omitempty"`
	TPMEnabled         *bool  `json:"tpm-enabled,omitempty"`
	TPMPersisted       *bool  `json:"tpm-persisted,omitempty"`
	VMUniqueID         string `json:"vmUniqueId,omitempty"`
	RootCertThumbprint string `json:"root-cert-thumbprint,omitempty"`
}

// MaxKeys bounds the number of keys accepted in runtime data.
const MaxKeys = 16

// ParseRuntimeData parses runtime data JSON. Keys must have unique kids.
func ParseRuntimeData(b []byte) (*RuntimeData, error) {
	var rd RuntimeData
	if err := json.Unmarshal(b, &rd); err != nil {
		return nil, fmt.Errorf("hcl: runtime data: %w", err)
	}
	if len(rd.Keys) > MaxKeys {
		return nil, fmt.Errorf("hcl: runtime data has %d keys, more than %d", len(rd.Keys), MaxKeys)
	}
	seen := make(map[string]bool, len(rd.Keys))
	for _, k := range rd.Keys {
		if k.Kid == "" {
			return nil, errors.New("hcl: runtime data key without kid")
		}
		if seen[k.Kid] {
			return nil, fmt.Errorf("hcl: runtime data has two keys with kid %q", k.Kid)
		}
		seen[k.Kid] = true
	}
	return &rd, nil
}

// Key returns the public key with the given kid.
func (rd *RuntimeData) Key(kid string) (crypto.PublicKey, error) {
	for _, k := range rd.Keys {
		if k.Kid == kid {
			pub, err := k.PublicKey()
			if err != nil {
				return nil, fmt.Errorf("hcl: key %q: %w", kid, err)
			}
			return pub, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrKeyNotFound, kid)
}

func b64url(field, s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%s is not base64url: %w", field, err)
	}
	return b, nil
}

// PublicKey converts the JWK to an *rsa.PublicKey or *ecdsa.PublicKey.
func (k JWK) PublicKey() (crypto.PublicKey, error) {
	switch k.Kty {
	case "RSA":
		n, err := b64url("n", k.N)
		if err != nil {
			return nil, err
		}
		e, err := b64url("e", k.E)
		if err != nil {
			return nil, err
		}
		if len(n) < 256 || len(n) > 512 || n[0] == 0 {
			return nil, fmt.Errorf("RSA modulus of %d bytes is not 2048 to 4096 bits", len(n))
		}
		if len(e) == 0 || len(e) > 4 {
			return nil, fmt.Errorf("RSA exponent of %d bytes", len(e))
		}
		exp := 0
		for _, c := range e {
			exp = exp<<8 | int(c)
		}
		if exp < 3 || exp%2 == 0 {
			return nil, fmt.Errorf("RSA exponent %d is invalid", exp)
		}
		return &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: exp}, nil
	case "EC":
		var curve elliptic.Curve
		switch k.Crv {
		case "P-256":
			curve = elliptic.P256()
		case "P-384":
			curve = elliptic.P384()
		default:
			return nil, fmt.Errorf("unsupported curve %q", k.Crv)
		}
		x, err := b64url("x", k.X)
		if err != nil {
			return nil, err
		}
		y, err := b64url("y", k.Y)
		if err != nil {
			return nil, err
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(x) != size || len(y) != size {
			return nil, fmt.Errorf("EC coordinates of %d/%d bytes, want %d", len(x), len(y), size)
		}
		uncompressed := append(append([]byte{4}, x...), y...)
		pub, err := ecdsa.ParseUncompressedPublicKey(curve, uncompressed)
		if err != nil {
			return nil, fmt.Errorf("EC point: %w", err)
		}
		return pub, nil
	}
	return nil, fmt.Errorf("unsupported key type %q", k.Kty)
}

// JWKFromPublicKey encodes an RSA or ECDSA public key as a JWK with kid.
func JWKFromPublicKey(kid string, pub crypto.PublicKey, ops ...string) (JWK, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		e := big.NewInt(int64(p.E)).Bytes()
		return JWK{Kid: kid, Kty: "RSA", KeyOps: ops, N: base64.RawURLEncoding.EncodeToString(p.N.Bytes()), E: base64.RawURLEncoding.EncodeToString(e)}, nil
	case *ecdsa.PublicKey:
		raw, err := p.Bytes()
		if err != nil {
			return JWK{}, err
		}
		size := (len(raw) - 1) / 2
		return JWK{Kid: kid, Kty: "EC", KeyOps: ops, Crv: p.Curve.Params().Name,
			X: base64.RawURLEncoding.EncodeToString(raw[1 : 1+size]),
			Y: base64.RawURLEncoding.EncodeToString(raw[1+size:])}, nil
	}
	return JWK{}, fmt.Errorf("hcl: unsupported public key type %T", pub)
}
