package main

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/services/agent"
)

// exportServer names the export of the nats-server's files.
const exportServer = "nats-server"

// fileConsoleToken is the web console's bearer token (vigil-console
// -token-file), made by the first export and given to the console only:
// it is not a bus credential, but the console's listener needs one on any
// address but loopback, as in a container.
const fileConsoleToken = "console.token"

// exportTarget is what one program gets from an identity directory: the
// files it reads, at the same paths relative to its own directory.
type exportTarget struct {
	name  string
	files []string
}

// exportTargets lists, for the NATS servers and each principal of
// busauth.Principals, the only files of an identity directory it needs:
// the server its configuration (and TLS certificate); a principal its
// credentials (and TLS client certificate); keyguard also the agents'
// signing key and the revoker's files (busauth.KeyguardFiles).
func exportTargets(withTLS bool) []exportTarget {
	tlsFile := func(name string) string { return filepath.Join(dirTLS, name) }
	server := exportTarget{name: exportServer, files: []string{busauth.FileServerConfig}}
	if withTLS {
		server.files = append(server.files, tlsFile(fileCACert), tlsFile(fileServerPEM), tlsFile(fileServerKey))
	}
	out := []exportTarget{server}
	for _, p := range busauth.Principals() {
		t := exportTarget{name: string(p), files: []string{busauth.CredsFile(p)}}
		if withTLS {
			cert, key := clientCertFiles(p)
			t.files = append(t.files, tlsFile(fileCACert), tlsFile(cert), tlsFile(key))
		}
		switch p {
		case busauth.Keyguard:
			t.files = append(t.files, busauth.KeyguardFiles()...)
		case busauth.Console:
			t.files = append(t.files, fileConsoleToken)
		}
		out = append(out, t)
	}
	return out
}

// exportIdentity copies each target's files from the identity directory
// dir to out/<target>/, keeping their relative paths and modes (secrets
// 0600 in directories of mode 0700). Each file is replaced atomically.
// Compose mounts one volume per target there, so that each container
// holds its own credentials and nothing else.
func exportIdentity(w io.Writer, dir, out string, withTLS bool) error {
	if err := ensureConsoleToken(filepath.Join(dir, fileConsoleToken)); err != nil {
		return err
	}
	for _, t := range exportTargets(withTLS) {
		for _, name := range t.files {
			src := filepath.Join(dir, name)
			info, err := os.Lstat(src)
			if err != nil {
				return fmt.Errorf("export %s: %w", t.name, err)
			}
			if !info.Mode().IsRegular() {
				return fmt.Errorf("export %s: %s is not a regular file", t.name, src)
			}
			b, err := os.ReadFile(src)
			if err != nil {
				return fmt.Errorf("export %s: %w", t.name, err)
			}
			dst := filepath.Join(out, t.name, name)
			if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
				return fmt.Errorf("export %s: %w", t.name, err)
			}
			if err := agent.WriteSecretFile(dst, b); err != nil {
				return fmt.Errorf("export %s: %w", t.name, err)
			}
			if perm := info.Mode().Perm(); perm&0o077 != 0 {
				// A public file (JWT, certificate, server configuration).
				if err := os.Chmod(dst, 0o644); err != nil {
					return fmt.Errorf("export %s: %w", t.name, err)
				}
			}
		}
		fmt.Fprintf(w, "exported %-14s %s (%d files)\n", t.name, filepath.Join(out, t.name), len(t.files))
	}
	return nil
}

// keepIdentity is init --keep on a directory that holds an identity: it
// checks the identity loads, makes the TLS files if asked for and
// missing, and exports.
func keepIdentity(w io.Writer, dir, exportDir string, withTLS bool, tlsHosts []string) error {
	if _, err := busauth.LoadDir(dir); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	fmt.Fprintf(w, "kept the identity in %s\n", dir)
	if withTLS {
		_, err := os.Lstat(filepath.Join(dir, dirTLS, fileCACert))
		switch {
		case os.IsNotExist(err):
			if err := writeTLS(dir, tlsHosts, time.Now()); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			printTLS(w, dir)
		case err != nil:
			return &exitError{code: 1, msg: err.Error()}
		}
	}
	if exportDir == "" {
		return nil
	}
	return exportOrFail(w, dir, exportDir, withTLS)
}

func exportOrFail(w io.Writer, dir, out string, withTLS bool) error {
	if err := exportIdentity(w, dir, out, withTLS); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	return nil
}

// ensureConsoleToken makes the console's token (32 random bytes, base64url)
// when path does not hold one yet.
func ensureConsoleToken(path string) error {
	switch _, err := os.Lstat(path); {
	case err == nil:
		return nil
	case !os.IsNotExist(err):
		return fmt.Errorf("console token: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return fmt.Errorf("console token: %w", err)
	}
	if err := agent.WriteSecretFile(path, []byte(base64.RawURLEncoding.EncodeToString(b[:])+"\n")); err != nil {
		return fmt.Errorf("console token: %w", err)
	}
	return nil
}
