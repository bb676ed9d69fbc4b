package main

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
)

// exportedFiles lists the regular files under dir, relative to it.
func exportedFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		out = append(out, rel)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// TestAuthInitExport: --export gives each program only its own files,
// secrets mode 0600, and each principal's exported credentials connect as
// that principal; --keep keeps the identity (and exports again), and
// refuses to be combined with --force.
func TestAuthInitExport(t *testing.T) {
	out := filepath.Join(t.TempDir(), "export")
	dir, stdout := authInit(t, "--tls", "--tls-host", "nats,127.0.0.1", "--export", out)
	if !strings.Contains(stdout, "exported keyguard") {
		t.Errorf("init --export does not say what it exported:\n%s", stdout)
	}
	srv := startFromDir(t, dir)

	want := func(p busauth.Principal) []string {
		cert, key := clientCertFiles(p)
		w := []string{busauth.CredsFile(p), filepath.Join(dirTLS, fileCACert), filepath.Join(dirTLS, cert), filepath.Join(dirTLS, key)}
		switch p {
		case busauth.Keyguard:
			w = append(w, busauth.KeyguardFiles()...)
		case busauth.Console:
			w = append(w, fileConsoleToken)
		}
		slices.Sort(w)
		return slices.Compact(w)
	}
	for _, p := range busauth.Principals() {
		t.Run(string(p), func(t *testing.T) {
			d := filepath.Join(out, string(p))
			if got := exportedFiles(t, d); !slices.Equal(got, want(p)) {
				t.Fatalf("exported %v, want %v", got, want(p))
			}
			cert, key := clientCertFiles(p)
			secrets := []string{busauth.CredsFile(p), filepath.Join(dirTLS, key)}
			if p == busauth.Console {
				secrets = append(secrets, fileConsoleToken)
			}
			for _, secret := range secrets {
				mustMode0600(t, filepath.Join(d, secret))
			}
			if fi, err := os.Stat(filepath.Join(d, dirTLS, cert)); err != nil || fi.Mode().Perm() != 0o644 {
				t.Errorf("certificate: %v, mode %v", err, fi)
			}
			conn := connectCredsFile(t, srv, filepath.Join(d, busauth.CredsFile(p)))
			if err := conn.NC.Flush(); err != nil {
				t.Fatal(err)
			}
		})
	}
	server := exportedFiles(t, filepath.Join(out, exportServer))
	wantServer := []string{busauth.FileServerConfig, filepath.Join(dirTLS, fileCACert), filepath.Join(dirTLS, fileServerPEM), filepath.Join(dirTLS, fileServerKey)}
	slices.Sort(wantServer)
	if !slices.Equal(server, wantServer) {
		t.Errorf("server export %v, want %v", server, wantServer)
	}
	if entries, _ := os.ReadDir(out); len(entries) != len(busauth.Principals())+1 {
		t.Errorf("export holds %d directories, want %d", len(entries), len(busauth.Principals())+1)
	}

	opJWT := func() string {
		b, err := os.ReadFile(filepath.Join(dir, busauth.FileOperatorJWT))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	creds := func() string {
		b, err := os.ReadFile(filepath.Join(out, string(busauth.Ingest), busauth.CredsFile(busauth.Ingest)))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	token := func() string {
		b, err := os.ReadFile(filepath.Join(out, string(busauth.Console), fileConsoleToken))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if len(strings.TrimSpace(token())) < 40 {
		t.Fatalf("console token %q is short", token())
	}
	before, beforeCreds, beforeToken := opJWT(), creds(), token()
	if err := os.RemoveAll(out); err != nil {
		t.Fatal(err)
	}
	_, _, err := runVigil(context.Background(), "auth", "init", "--dir", dir, "--keep", "--tls", "--export", out)
	if err != nil {
		t.Fatalf("init --keep: %v", err)
	}
	if opJWT() != before || creds() != beforeCreds || token() != beforeToken {
		t.Fatal("init --keep replaced the identity")
	}
	if _, _, err := runVigil(context.Background(), "auth", "init", "--dir", dir, "--keep", "--force"); exitCode(err) != 2 {
		t.Fatalf("--keep --force: %v, want a usage error", err)
	}
}
