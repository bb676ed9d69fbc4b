package auditlog

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// Threat: the auditor's signer key in a file other users can read: whoever
// reads it can sign checkpoints of a rewritten log. Defence: LoadSigner and
// EnsureKeyFiles (the auditor's start) refuse it, naming the file, its mode
// and the fix; the public verifier key may stay readable.
func TestSignerKeyReadableByOthersRefused(t *testing.T) {
	cases := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o640, false},
		{0o644, false},
		{0o606, false},
	}
	loaders := []struct {
		name string
		load func(signer, verifier string) error
	}{
		{"LoadSigner", func(s, _ string) error { _, err := LoadSigner(s); return err }},
		{"EnsureKeyFiles", func(s, v string) error { return EnsureKeyFiles(s, v, testOrigin) }},
	}
	for _, tc := range cases {
		for _, l := range loaders {
			t.Run(fmt.Sprintf("%s/%04o", l.name, tc.mode), func(t *testing.T) {
				dir := t.TempDir()
				skey, vkey := filepath.Join(dir, "signer.key"), filepath.Join(dir, "signer.pub")
				if err := GenerateKeyFiles(skey, vkey, testOrigin); err != nil {
					t.Fatal(err)
				}
				if st, err := os.Stat(skey); err != nil || st.Mode().Perm() != 0o600 {
					t.Fatalf("generated signer key: %v, %v; want mode 0600", st.Mode(), err)
				}
				before, _ := os.ReadFile(skey)
				if err := os.Chmod(skey, tc.mode); err != nil {
					t.Fatal(err)
				}
				err := l.load(skey, vkey)
				if tc.ok {
					if err != nil {
						t.Fatal(err)
					}
					return
				}
				if !errors.Is(err, keyfile.ErrPermissive) || !strings.Contains(err.Error(), skey) || !strings.Contains(err.Error(), "chmod 600") {
					t.Fatalf("%v, want a refusal naming %s and the fix", err, skey)
				}
				if after, _ := os.ReadFile(skey); !bytes.Equal(before, after) {
					t.Fatal("the refused signer key was rewritten")
				}
			})
		}
	}
	// The verifier key is public.
	dir := t.TempDir()
	skey, vkey := filepath.Join(dir, "signer.key"), filepath.Join(dir, "signer.pub")
	if err := GenerateKeyFiles(skey, vkey, testOrigin); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(vkey, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadVerifier(vkey); err != nil {
		t.Fatalf("a world-readable verifier key: %v", err)
	}
}
