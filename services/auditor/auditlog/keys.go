package auditlog

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// DefaultOrigin is the checkpoint origin (and key name) of a log when none
// is chosen.
const DefaultOrigin = "vigil.local/audit"

// Key files hold one C2SP signed-note key each, followed by a newline: the
// signer key ("PRIVATE+KEY+<name>+<hash>+<base64>", mode 0600) and the
// verifier key ("<name>+<hash>+<base64>"). The key name is the log's
// checkpoint origin.

// GenerateKeyFiles creates a new Ed25519 key pair named origin and writes it
// to signerPath and verifierPath. It refuses to overwrite existing files.
func GenerateKeyFiles(signerPath, verifierPath, origin string) error {
	if origin == "" {
		origin = DefaultOrigin
	}
	skey, vkey, err := note.GenerateKey(rand.Reader, origin)
	if err != nil {
		return fmt.Errorf("auditlog: generate key %q: %w", origin, err)
	}
	for _, p := range []string{signerPath, verifierPath} {
		if _, err := os.Stat(p); err == nil {
			return fmt.Errorf("auditlog: %s: %w", p, fs.ErrExist)
		}
	}
	if err := writeFileExcl(signerPath, []byte(skey+"\n"), 0o600); err != nil {
		return err
	}
	if err := writeFileExcl(verifierPath, []byte(vkey+"\n"), 0o644); err != nil {
		_ = os.Remove(signerPath)
		return err
	}
	return nil
}

// EnsureKeyFiles makes sure a key pair exists at signerPath and verifierPath:
// with neither present it generates one (named origin); with only the signer
// key present it derives and writes the verifier key. It fails when the
// verifier key exists without its signer key, or when the two do not match.
func EnsureKeyFiles(signerPath, verifierPath, origin string) error {
	_, errS := os.Stat(signerPath)
	_, errV := os.Stat(verifierPath)
	switch {
	case errors.Is(errS, fs.ErrNotExist) && errors.Is(errV, fs.ErrNotExist):
		if err := os.MkdirAll(filepath.Dir(signerPath), 0o700); err != nil {
			return fmt.Errorf("auditlog: %w", err)
		}
		if err := os.MkdirAll(filepath.Dir(verifierPath), 0o755); err != nil {
			return fmt.Errorf("auditlog: %w", err)
		}
		return GenerateKeyFiles(signerPath, verifierPath, origin)
	case errS != nil && !errors.Is(errS, fs.ErrNotExist):
		return fmt.Errorf("auditlog: %w", errS)
	case errors.Is(errS, fs.ErrNotExist):
		return fmt.Errorf("auditlog: verifier key %s exists but signer key %s does not", verifierPath, signerPath)
	}
	skey, err := readSignerKey(signerPath)
	if err != nil {
		return err
	}
	vkey, err := VerifierKeyFromSigner(skey)
	if err != nil {
		return fmt.Errorf("auditlog: %s: %w", signerPath, err)
	}
	if errors.Is(errV, fs.ErrNotExist) {
		return writeFileExcl(verifierPath, []byte(vkey+"\n"), 0o644)
	}
	have, err := readKey(verifierPath)
	if err != nil {
		return err
	}
	if have != vkey {
		return fmt.Errorf("auditlog: verifier key %s does not belong to signer key %s", verifierPath, signerPath)
	}
	return nil
}

// VerifierKeyFromSigner derives the verifier key of an Ed25519 signer key.
func VerifierKeyFromSigner(skey string) (string, error) {
	// PRIVATE+KEY+<name>+<hash>+<base64(alg || seed)>
	rest, ok := strings.CutPrefix(skey, "PRIVATE+KEY+")
	if !ok {
		return "", errors.New("not a signer key")
	}
	// Key names cannot contain '+'; the base64 key can.
	parts := strings.SplitN(rest, "+", 3)
	if len(parts) != 3 {
		return "", errors.New("malformed signer key")
	}
	name := parts[0]
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("signer key is not an Ed25519 key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return "", err
	}
	if _, err := note.NewSigner(skey); err != nil {
		return "", err
	}
	return vkey, nil
}

// LoadSigner reads a signer key file, which must be accessible to its
// owner only (keyfile.Check).
func LoadSigner(path string) (note.Signer, error) {
	k, err := readSignerKey(path)
	if err != nil {
		return nil, err
	}
	s, err := note.NewSigner(k)
	if err != nil {
		return nil, fmt.Errorf("auditlog: signer key %s: %w", path, err)
	}
	return s, nil
}

// LoadVerifier reads a verifier (public) key file.
func LoadVerifier(path string) (note.Verifier, error) {
	k, err := readKey(path)
	if err != nil {
		return nil, err
	}
	return ParseVerifier(k)
}

// ParseVerifier parses a verifier key ("<name>+<hash>+<base64>").
func ParseVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, fmt.Errorf("auditlog: verifier key: %w", err)
	}
	return v, nil
}

func readKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("auditlog: read key: %w", err)
	}
	if len(b) > 4096 {
		return "", fmt.Errorf("auditlog: key file %s is %d bytes, not a key", path, len(b))
	}
	return string(bytes.TrimSpace(b)), nil
}

// readSignerKey reads a signer (private) key file, refusing one that group
// or others may access.
func readSignerKey(path string) (string, error) {
	b, err := keyfile.Read(path, 4096)
	if err != nil {
		return "", fmt.Errorf("auditlog: signer key: %w", err)
	}
	return string(bytes.TrimSpace(b)), nil
}

func writeFileExcl(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return fmt.Errorf("auditlog: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("auditlog: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("auditlog: sync %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("auditlog: close %s: %w", path, err)
	}
	return nil
}
