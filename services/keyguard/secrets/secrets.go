// Package secrets stores the local release service's secrets in the
// vigil-keyguard-secrets KV bucket, each encrypted with AES-256-GCM under a
// key derived from keyguard's master key and bound to its name, so that
// neither NATS storage nor its backups ever hold a secret in the clear.
package secrets

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// MasterKeySize is the size of a master key.
const MasterKeySize = 32

// MaxSecretSize bounds one secret.
const MaxSecretSize = 64 << 10

// Format of a stored record.
const Format = "vigil.keyguard.secret/v1"

// Errors.
var (
	ErrNotFound       = errors.New("secrets: no such secret")
	ErrWrongMasterKey = errors.New("secrets: secret was encrypted under another master key")
	ErrBadMasterKey   = errors.New("secrets: bad master key")
)

// ParseMasterKey accepts a master key as 32 raw bytes, 64 hex characters or
// standard base64 of 32 bytes (surrounding white space ignored).
func ParseMasterKey(b []byte) ([]byte, error) {
	if len(b) == MasterKeySize {
		return bytes.Clone(b), nil
	}
	t := bytes.TrimSpace(b)
	if len(t) == 2*MasterKeySize {
		if k, err := hex.DecodeString(string(t)); err == nil {
			return k, nil
		}
	}
	if k, err := base64.StdEncoding.DecodeString(string(t)); err == nil && len(k) == MasterKeySize {
		return k, nil
	}
	return nil, fmt.Errorf("%w: want %d raw bytes, %d hex characters or base64 of %d bytes, got %d bytes",
		ErrBadMasterKey, MasterKeySize, 2*MasterKeySize, MasterKeySize, len(b))
}

// LoadMasterKey reads a master key file (see ParseMasterKey). The file
// must be accessible to its owner only (keyfile.Check).
func LoadMasterKey(path string) ([]byte, error) {
	b, err := keyfile.Read(path, 4<<10)
	if err != nil {
		return nil, fmt.Errorf("secrets: master key: %w", err)
	}
	k, err := ParseMasterKey(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// EnsureMasterKeyFile loads the master key at path, or, when the file does
// not exist, generates one and writes it there (hex, mode 0600, never
// overwriting a file that appeared meanwhile).
func EnsureMasterKeyFile(path string) ([]byte, error) {
	k, err := LoadMasterKey(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return k, err
	}
	k = make([]byte, MasterKeySize)
	_, _ = rand.Read(k)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadMasterKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("secrets: create master key: %w", err)
	}
	if _, err := f.WriteString(hex.EncodeToString(k) + "\n"); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("secrets: write master key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("secrets: write master key: %w", err)
	}
	return k, nil
}

// record is what the bucket stores.
type record struct {
	Format     string    `json:"format"`
	KeyID      string    `json:"kid"`
	Nonce      []byte    `json:"nonce"`
	Ciphertext []byte    `json:"ciphertext"`
	StoredAt   time.Time `json:"stored_at"`
}

// Store holds encrypted secrets.
type Store struct {
	kv    jetstream.KeyValue
	nc    *nats.Conn
	aead  cipher.AEAD
	keyID string
}

// Open opens the bucket (which events.Provision creates) with masterKey.
func Open(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, masterKey []byte) (*Store, error) {
	if len(masterKey) != MasterKeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrBadMasterKey, len(masterKey), MasterKeySize)
	}
	enc, err := hkdf.Key(sha256.New, masterKey, nil, "vigil keyguard secret encryption v1", 32)
	if err != nil {
		return nil, err
	}
	id, err := hkdf.Key(sha256.New, masterKey, nil, "vigil keyguard master key id v1", 8)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(enc)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, events.BucketKeyguardSecrets)
	if err != nil {
		return nil, fmt.Errorf("secrets: open bucket %s: %w", events.BucketKeyguardSecrets, err)
	}
	return &Store{kv: kv, nc: nc, aead: aead, keyID: hex.EncodeToString(id)}, nil
}

// KeyID identifies the master key without revealing it.
func (s *Store) KeyID() string { return s.keyID }

func aad(name string) []byte { return append([]byte(Format+"\x00"), name...) }

// Put stores value as the newest version of secret name and returns that
// version.
func (s *Store) Put(ctx context.Context, name string, value []byte) (uint64, error) {
	if !keyrelease.ValidKeyName(name) {
		return 0, fmt.Errorf("secrets: %q is not a valid key name", name)
	}
	if len(value) == 0 || len(value) > MaxSecretSize {
		return 0, fmt.Errorf("secrets: %s: secret is %d bytes, want 1 to %d", name, len(value), MaxSecretSize)
	}
	nonce := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(nonce)
	rec := record{
		Format:     Format,
		KeyID:      s.keyID,
		Nonce:      nonce,
		Ciphertext: s.aead.Seal(nil, nonce, value, aad(name)),
		StoredAt:   time.Now().UTC(),
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, err
	}
	rev, err := s.kv.Put(ctx, name, b)
	if err != nil {
		return 0, fmt.Errorf("secrets: put %s: %w", name, err)
	}
	return rev, nil
}

// Get returns the newest version of secret name and its version.
func (s *Store) Get(ctx context.Context, name string) ([]byte, uint64, error) {
	if !keyrelease.ValidKeyName(name) {
		return nil, 0, fmt.Errorf("secrets: %q is not a valid key name", name)
	}
	e, err := kvlast.Get(ctx, s.nc, events.BucketKeyguardSecrets, name)
	if bus.IsKeyMissing(err) {
		return nil, 0, fmt.Errorf("%w: %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, 0, err
	}
	var rec record
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return nil, 0, fmt.Errorf("secrets: %s: unreadable record: %w", name, err)
	}
	if rec.Format != Format {
		return nil, 0, fmt.Errorf("secrets: %s: format %q, want %q", name, rec.Format, Format)
	}
	if rec.KeyID != s.keyID {
		return nil, 0, fmt.Errorf("%w: %s (key id %s, ours %s)", ErrWrongMasterKey, name, rec.KeyID, s.keyID)
	}
	if len(rec.Nonce) != s.aead.NonceSize() {
		return nil, 0, fmt.Errorf("secrets: %s: nonce is %d bytes", name, len(rec.Nonce))
	}
	pt, err := s.aead.Open(nil, rec.Nonce, rec.Ciphertext, aad(name))
	if err != nil {
		return nil, 0, fmt.Errorf("secrets: %s: decryption failed (record altered or moved): %w", name, err)
	}
	return pt, e.Revision, nil
}

// Delete removes secret name.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := s.kv.Delete(ctx, name); err != nil {
		return fmt.Errorf("secrets: delete %s: %w", name, err)
	}
	return nil
}

// Names lists the stored secrets.
func (s *Store) Names(ctx context.Context) ([]string, error) {
	l, err := s.kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("secrets: list: %w", err)
	}
	var names []string
	seen := map[string]bool{}
	for k := range l.Keys() {
		if !seen[k] {
			seen[k] = true
			names = append(names, k)
		}
	}
	_ = l.Stop()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("secrets: list: %w", err)
	}
	sort.Strings(names)
	return names, nil
}
