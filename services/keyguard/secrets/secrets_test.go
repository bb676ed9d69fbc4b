package secrets_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

func TestParseMasterKey(t *testing.T) {
	k := bytes.Repeat([]byte{0xab}, 32)
	for name, in := range map[string][]byte{
		"raw":    k,
		"hex":    []byte(hex.EncodeToString(k) + "\n"),
		"base64": []byte(" " + base64.StdEncoding.EncodeToString(k) + "\n"),
	} {
		got, err := secrets.ParseMasterKey(in)
		if err != nil || !bytes.Equal(got, k) {
			t.Errorf("%s: %x, %v", name, got, err)
		}
	}
	for _, bad := range [][]byte{nil, make([]byte, 31), []byte("zz" + hex.EncodeToString(k)[2:]), []byte(base64.StdEncoding.EncodeToString(k[:16]))} {
		if _, err := secrets.ParseMasterKey(bad); !errors.Is(err, secrets.ErrBadMasterKey) {
			t.Errorf("ParseMasterKey(%q) = %v", bad, err)
		}
	}
}

func TestEnsureMasterKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "master.key")
	k1, err := secrets.EnsureMasterKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v", st.Mode(), err)
	}
	k2, err := secrets.EnsureMasterKeyFile(path)
	if err != nil || !bytes.Equal(k1, k2) {
		t.Fatal("second call did not load the same key")
	}
	if _, err := secrets.LoadMasterKey(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
}

// Threat: keyguard's master key in a file other users can read (it
// decrypts every local secret). Defence: the file is refused, with its
// name, mode and the fix, and never rewritten.
func TestMasterKeyFileReadableByOthersRefused(t *testing.T) {
	key := []byte(hex.EncodeToString(bytes.Repeat([]byte{0xab}, 32)) + "\n")
	cases := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o640, false},
		{0o644, false},
		{0o604, false},
	}
	loaders := []struct {
		name string
		load func(string) ([]byte, error)
	}{
		{"LoadMasterKey", secrets.LoadMasterKey},
		{"EnsureMasterKeyFile", secrets.EnsureMasterKeyFile},
	}
	for _, tc := range cases {
		for _, l := range loaders {
			t.Run(fmt.Sprintf("%s/%04o", l.name, tc.mode), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "master.key")
				if err := os.WriteFile(path, key, 0o600); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.mode); err != nil {
					t.Fatal(err)
				}
				_, err := l.load(path)
				if tc.ok {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if !errors.Is(err, keyfile.ErrPermissive) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "chmod 600") {
					t.Fatalf("%v, want a refusal naming %s and the fix", err, path)
				}
				if b, _ := os.ReadFile(path); !bytes.Equal(b, key) {
					t.Fatal("the refused key file was rewritten")
				}
			})
		}
	}
}

func TestStoreEncryptsAtRest(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	master := bytes.Repeat([]byte{1}, 32)
	s, err := secrets.Open(ctx, nc, js, master)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("correct horse battery staple")
	v1, err := s.Put(ctx, "disk-key", secret)
	if err != nil {
		t.Fatal(err)
	}
	got, ver, err := s.Get(ctx, "disk-key")
	if err != nil || !bytes.Equal(got, secret) || ver != v1 {
		t.Fatalf("get = %q v%d, %v", got, ver, err)
	}

	// What NATS stores holds no plaintext.
	kv, err := js.KeyValue(ctx, events.BucketKeyguardSecrets)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, "disk-key")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(e.Value(), secret) || bytes.Contains(e.Value(), []byte(base64.StdEncoding.EncodeToString(secret))) {
		t.Fatal("plaintext stored")
	}

	// Another master key cannot read it and says so.
	other, err := secrets.Open(ctx, nc, js, bytes.Repeat([]byte{2}, 32))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := other.Get(ctx, "disk-key"); !errors.Is(err, secrets.ErrWrongMasterKey) {
		t.Fatalf("other master key: %v", err)
	}

	// A record moved to another name does not decrypt.
	if _, err := kv.Put(ctx, "moved", e.Value()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "moved"); err == nil {
		t.Fatal("moved record decrypted")
	}
	// A tampered ciphertext does not decrypt.
	var rec map[string]any
	_ = json.Unmarshal(e.Value(), &rec)
	ct, _ := base64.StdEncoding.DecodeString(rec["ciphertext"].(string))
	ct[0] ^= 1
	rec["ciphertext"] = ct
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(ctx, "tampered", b); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "tampered"); err == nil {
		t.Fatal("tampered record decrypted")
	}

	v2, err := s.Put(ctx, "disk-key", []byte("rotated"))
	if err != nil || v2 <= v1 {
		t.Fatalf("rotate: v%d, %v", v2, err)
	}
	names, err := s.Names(ctx)
	if err != nil || len(names) != 3 {
		t.Fatalf("names %v, %v", names, err)
	}
	if err := s.Delete(ctx, "moved"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Get(ctx, "moved"); !errors.Is(err, secrets.ErrNotFound) {
		t.Fatalf("deleted: %v", err)
	}
	if _, err := s.Put(ctx, "bad.name", secret); err == nil {
		t.Fatal("bad name accepted")
	}
	if _, err := s.Put(ctx, "big", make([]byte, secrets.MaxSecretSize+1)); err == nil {
		t.Fatal("oversized secret accepted")
	}
}
