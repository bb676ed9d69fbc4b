package keyfile_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// Threat: a key file other users on the host can read (a umask of 022, a
// copy made with cp, a world-readable volume) leaks the key. Defence: key
// files with any group or other permission bit are refused, naming the
// file, its mode and the fix.
func TestPermissiveKeyFileRefused(t *testing.T) {
	cases := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o700, true},
		{0o640, false},
		{0o604, false},
		{0o644, false},
		{0o660, false},
		{0o601, false},
		{0o610, false},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%04o", tc.mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "key")
			if err := os.WriteFile(path, []byte("secret\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			b, readErr := keyfile.Read(path, 0)
			checkErr := keyfile.Check(path)
			for name, err := range map[string]error{"Read": readErr, "Check": checkErr} {
				if tc.ok {
					if err != nil {
						t.Fatalf("%s: %v", name, err)
					}
					continue
				}
				if !errors.Is(err, keyfile.ErrPermissive) {
					t.Fatalf("%s: %v, want ErrPermissive", name, err)
				}
				for _, want := range []string{path, fmt.Sprintf("%04o", tc.mode), "chmod 600"} {
					if !strings.Contains(err.Error(), want) {
						t.Fatalf("%s: %q does not say %q", name, err, want)
					}
				}
			}
			if tc.ok && string(b) != "secret\n" {
				t.Fatalf("read %q", b)
			}
		})
	}
}

func TestReadRefusesWhatIsNotAKeyFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, 101), 0o600); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(dir, "open")
	if err := os.WriteFile(open, []byte("k"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(open, link); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "dir")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, path string
		check      func(error) bool
	}{
		{"missing", filepath.Join(dir, "missing"), func(err error) bool { return errors.Is(err, os.ErrNotExist) }},
		{"too large", big, func(err error) bool { return err != nil && strings.Contains(err.Error(), "over 100 bytes") }},
		{"directory", sub, func(err error) bool { return err != nil && strings.Contains(err.Error(), "not a regular file") }},
		{"symlink to an open file", link, func(err error) bool { return errors.Is(err, keyfile.ErrPermissive) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := keyfile.Read(tc.path, 100); !tc.check(err) {
				t.Fatalf("Read(%s): %v", tc.name, err)
			}
		})
	}
}
