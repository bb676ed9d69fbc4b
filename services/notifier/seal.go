package notifier

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// Sink secrets are write-only. A subscription's URL and secrets are sealed
// with HPKE (RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// AES-256-GCM) to the notifier's public key, with the subscription id as
// info, so a sealed spec moved to another subscription does not open. The
// notifier publishes its public key in vigil-alert-state (KeyPublicKey);
// the CLI seals to it and never keeps or prints a secret; only the
// notifier, holding the private key file, opens them.

// KeyPublicKey is the vigil-alert-state key of the notifier's public key
// (base64).
const KeyPublicKey = "notifier.publickey"

var (
	sealKEM  = hpke.DHKEM(ecdh.X25519())
	sealKDF  = hpke.HKDFSHA256()
	sealAEAD = hpke.AES256GCM()
)

func sealInfo(id string) []byte { return []byte("vigil notifier subscription " + id) }

// PrivateKey is the notifier's key: it opens the sealed sinks.
type PrivateKey struct{ k hpke.PrivateKey }

// GenerateKeyFile writes a new private key to path (mode 0600); it fails if
// the file exists.
func GenerateKeyFile(path string) error {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("notifier: key file: %w", err)
	}
	if _, err := fmt.Fprintln(f, base64.StdEncoding.EncodeToString(k.Bytes())); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}

// LoadKeyFile reads the private key at path (base64 of 32 bytes; only its
// owner may read the file: pkg/keyfile).
func LoadKeyFile(path string) (*PrivateKey, error) {
	b, err := keyfile.Read(path, 1<<10)
	if err != nil {
		return nil, err
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(raw) != 32 {
		return nil, fmt.Errorf("notifier: key file %s: want the base64 of a 32-byte X25519 key", path)
	}
	k, err := sealKEM.NewPrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("notifier: key file %s: %w", path, err)
	}
	return &PrivateKey{k: k}, nil
}

// PublicKey is the key's public half, base64 (what KeyPublicKey holds).
func (k *PrivateKey) PublicKey() string {
	return base64.StdEncoding.EncodeToString(k.k.PublicKey().Bytes())
}

// SealSpec seals a sink's URL and secrets for subscription id to the
// notifier's public key pub (base64).
func SealSpec(pub, id, url string, secrets sink.Secrets) ([]byte, error) {
	raw, err := base64.StdEncoding.DecodeString(pub)
	if err != nil {
		return nil, fmt.Errorf("notifier: public key: %w", err)
	}
	pk, err := sealKEM.NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("notifier: public key: %w", err)
	}
	plain, err := json.Marshal(sealedSpec{URL: url, Secrets: secrets})
	if err != nil {
		return nil, err
	}
	return hpke.Seal(pk, sealKDF, sealAEAD, sealInfo(id), plain)
}

// errUnsealable is a sealed spec the key does not open.
var errUnsealable = errors.New("notifier: the sealed sink does not open with this notifier's key (sealed to another key, or for another subscription)")

// open opens s's sealed spec.
func (k *PrivateKey) open(s Subscription) (sink.Spec, error) {
	plain, err := hpke.Open(k.k, sealKDF, sealAEAD, sealInfo(s.ID), s.Sealed)
	if err != nil {
		return sink.Spec{}, errUnsealable
	}
	var sp sealedSpec
	if err := json.Unmarshal(plain, &sp); err != nil {
		return sink.Spec{}, fmt.Errorf("notifier: sealed sink of %s: %w", s.ID, err)
	}
	return sink.Spec{Protocol: s.Protocol, URL: sp.URL, Settings: s.ProtocolSettings, Secrets: sp.Secrets}, nil
}
