package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

// ReleaseConfig configures a key release from inside the VM.
type ReleaseConfig struct {
	// Conn is an open connection; when nil, Release connects with NATS.
	Conn *bus.Conn
	NATS bus.Config
	// ResourceID identifies the VM; from the instance metadata service when
	// empty.
	ResourceID string
	IMDS       *IMDS
	// Source produces the evidence bound to the release; default the Azure
	// vTPM at TPMPath.
	Source                Source
	TPMPath, EventLogPath string
	// EnrollURL, when set, is keyguard's enrollment API: the release
	// connects with credentials earned by attestation (Config.EnrollURL).
	EnrollURL string
	Logger    *slog.Logger
}

// Release asks keyguard for the secret keyName with the protocol of
// pkg/keyrelease: the vTPM quotes over the binding of keyguard's nonce and
// an ephemeral key, and only this process can open the answer. A refusal is
// a *bus.ReplyError (keyrelease.RefusalCode names it).
func Release(ctx context.Context, cfg ReleaseConfig, keyName string) (*keyrelease.Released, error) {
	if cfg.IMDS == nil {
		cfg.IMDS = NewIMDS("")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ResourceID == "" {
		c, err := cfg.IMDS.Compute(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent: learn the VM's identity (or configure the resource ID): %w", err)
		}
		cfg.ResourceID = c.ResourceID
	}
	vm := events.VMKey(cfg.ResourceID)
	src := cfg.Source
	if src == nil {
		path := cfg.TPMPath
		if path == "" {
			path = DefaultTPMPath
		}
		tpm := NewAzureTPM(AzureTPMConfig{Open: openDevice(path), IMDS: cfg.IMDS, EventLogPath: cfg.EventLogPath, VMKey: vm, Logger: cfg.Logger})
		defer func() { _ = tpm.Close() }()
		src = tpm
	}
	conn := cfg.Conn
	if conn == nil {
		nc := cfg.NATS
		if nc.Name == "" {
			nc.Name = "vigil-agent release " + vm
		}
		// Keyguard answers an agent under its own inbox only.
		if nc.InboxPrefix == "" {
			nc.InboxPrefix = busauth.AgentInboxPrefix(vm)
		}
		if nc.Logger == nil {
			nc.Logger = cfg.Logger
		}
		if _, err := enrolled(ctx, &nc, cfg.EnrollURL, nil, vm, src, cfg.Logger); err != nil {
			return nil, err
		}
		c, err := bus.Connect(ctx, nc)
		if err != nil {
			return nil, err
		}
		defer func() { _ = c.Close() }()
		conn = c
	}
	client := &keyrelease.Client{Requester: conn, VMKey: vm, Attester: keyrelease.AttesterFunc(src.Evidence)}
	return client.Release(ctx, keyName)
}

// CheckSecretPath reports whether WriteSecretFile may write path: it
// refuses a symbolic link and anything but a regular file there, so that a
// release is not made for a secret that cannot be stored.
func CheckSecretPath(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("agent: secret file: %w", err)
	case fi.Mode()&fs.ModeSymlink != 0:
		return fmt.Errorf("agent: secret file %s is a symbolic link; refusing to write a secret through it", path)
	case !fi.Mode().IsRegular():
		return fmt.Errorf("agent: secret file %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	return nil
}

// WriteSecretFile stores secret at path with mode 0600, atomically: it is
// written to a new file (O_EXCL, mode 0600) in path's directory, synced,
// and renamed over path, and the directory is synced. A reader sees the old
// file or the whole new one, never part of it. A symbolic link at path is
// refused (CheckSecretPath), and a link that appears there meanwhile is
// replaced by the rename, never followed.
func WriteSecretFile(path string, secret []byte) (err error) {
	if err := CheckSecretPath(path); err != nil {
		return err
	}
	dir := filepath.Dir(path)
	var suffix [8]byte
	_, _ = rand.Read(suffix[:])
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp-"+hex.EncodeToString(suffix[:]))
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("agent: secret file: %w", err)
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	// The umask may have taken bits away; make it exactly 0600.
	if err := f.Chmod(0o600); err != nil {
		return fmt.Errorf("agent: secret file: %w", err)
	}
	if _, err := f.Write(secret); err != nil {
		return fmt.Errorf("agent: write secret file: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("agent: sync secret file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("agent: close secret file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("agent: secret file: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		_ = d.Sync() // the rename survives a crash
		_ = d.Close()
	}
	return nil
}
