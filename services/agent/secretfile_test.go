package agent_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/services/agent"
)

// Threat: `vigil-agent release -out FILE` writing the secret through a
// symbolic link planted at FILE (into a file the attacker can read, or over
// one it wants destroyed), leaving it readable by others, or half-written
// after a crash. Defence: a symlink or non-regular file at FILE is refused
// and what it points to untouched; the secret is written to an O_EXCL
// temporary file with mode 0600 in the same directory, synced and renamed
// over FILE.
func TestWriteSecretFile(t *testing.T) {
	secret := []byte("the released secret")
	cases := []struct {
		name    string
		prepare func(t *testing.T, dir, path string)
		refused string // part of the error, "" when the write succeeds
	}{
		{"new file", func(*testing.T, string, string) {}, ""},
		{"replaces a world-readable file", func(t *testing.T, _, path string) {
			if err := os.WriteFile(path, []byte("old contents, longer than the secret"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, ""},
		{"symlink to another file", func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(dir, "elsewhere"), path); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"dangling symlink", func(t *testing.T, dir, path string) {
			if err := os.Symlink(filepath.Join(dir, "nothing-yet"), path); err != nil {
				t.Fatal(err)
			}
		}, "symbolic link"},
		{"directory", func(t *testing.T, _, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}, "not a regular file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			elsewhere := filepath.Join(dir, "elsewhere")
			if err := os.WriteFile(elsewhere, []byte("someone else's file"), 0o644); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, "secret")
			tc.prepare(t, dir, path)
			err := agent.WriteSecretFile(path, secret)
			if tc.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), path) {
					t.Fatalf("WriteSecretFile: %v, want a refusal (%s) naming %s", err, tc.refused, path)
				}
				if err := agent.CheckSecretPath(path); err == nil {
					t.Fatal("CheckSecretPath accepts what WriteSecretFile refuses")
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				fi, err := os.Lstat(path)
				if err != nil {
					t.Fatal(err)
				}
				if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
					t.Fatalf("secret file mode %s, want a regular file with 0600", fi.Mode())
				}
				if got, _ := os.ReadFile(path); string(got) != string(secret) {
					t.Fatalf("secret file holds %q", got)
				}
			}
			if got, _ := os.ReadFile(elsewhere); string(got) != "someone else's file" {
				t.Fatalf("the file a link pointed to now holds %q", got)
			}
			if _, err := os.Lstat(filepath.Join(dir, "nothing-yet")); !os.IsNotExist(err) {
				t.Fatal("a dangling link's target was created")
			}
			entries, err := os.ReadDir(dir)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if strings.Contains(e.Name(), ".tmp-") {
					t.Fatalf("temporary file %s left behind", e.Name())
				}
			}
		})
	}
}
