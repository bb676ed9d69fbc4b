package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/vigil-cc/vigil/pkg/bus"
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
	Logger                *slog.Logger
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
		if nc.Logger == nil {
			nc.Logger = cfg.Logger
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
