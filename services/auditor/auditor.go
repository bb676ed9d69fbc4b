// Package auditor writes every event of VIGIL_EVENTS, exactly once and in
// stream order, into an append-only, tamper-evident transparency log
// (Tessera, POSIX storage, C2SP tlog-tiles layout) and publishes Ed25519
// signed checkpoints (C2SP signed notes) on vigil.audit.checkpoint.
//
// Exactly once: every entry records its stream sequence. The log, not the
// consumer, is the source of truth for progress: at start the auditor reads
// the log's tail, recreates its durable consumer at the first sequence the
// log does not account for, and skips anything already logged. A message is
// acknowledged only after Tessera has durably sequenced and integrated its
// entry (the Add future resolved), so a crash at any point either loses an
// unacknowledged message that is redelivered, or leaves a logged message
// that is skipped after restart.
//
// One writer: an exclusive flock(2) on a file in the log directory. A second
// auditor on the same directory waits as a hot standby and takes over as
// soon as the kernel releases the lock, which it does when the writer exits
// or dies.
package auditor

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// Run runs an auditor until ctx is done: it waits for the log's writer lock
// (as a standby while another auditor holds it), then logs every message of
// the stream. It returns nil after a clean shutdown on ctx cancellation and
// an error when the log cannot be written (the process should exit, and a
// standby takes over).
func Run(ctx context.Context, c Config) error {
	cfg, err := c.withDefaults()
	if err != nil {
		return err
	}
	log := cfg.Logger.With("component", "auditor", "log", cfg.LogDir)
	if cfg.GenerateKeys {
		if err := EnsureKeys(cfg.SignerKeyFile, cfg.VerifierKeyFile, cfg.Origin); err != nil {
			return fmt.Errorf("auditor: keys: %w", err)
		}
	}
	signer, err := auditlog.LoadSigner(cfg.SignerKeyFile)
	if err != nil {
		return fmt.Errorf("auditor: %w", err)
	}
	if cfg.VerifierKeyFile != "" {
		if err := auditlog.EnsureKeyFiles(cfg.SignerKeyFile, cfg.VerifierKeyFile, cfg.Origin); err != nil {
			return fmt.Errorf("auditor: keys: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return fmt.Errorf("auditor: log directory: %w", err)
	}

	js, closeNATS, err := connect(cfg)
	if err != nil {
		return err
	}
	defer closeNATS()
	if !cfg.SkipProvision {
		if err := events.Provision(ctx, js, cfg.Topology); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("auditor: provision: %w", err)
		}
	}

	lock, err := acquireLock(ctx, cfg.LogDir, cfg.LockPollInterval, func(holder string) {
		log.Info("another auditor writes this log; waiting as standby", "holder", holder)
		if cfg.OnRole != nil {
			cfg.OnRole(RoleStandby)
		}
	})
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.release()
	log.Info("writing the audit log", "origin", signer.Name())
	if cfg.OnRole != nil {
		cfg.OnRole(RoleWriter)
	}
	return runWriter(ctx, cfg, log, js, signer)
}

func connect(cfg Config) (jetstream.JetStream, func(), error) {
	if cfg.JetStream != nil {
		return cfg.JetStream, func() {}, nil
	}
	if cfg.Conn != nil {
		js, err := jetstream.New(cfg.Conn)
		if err != nil {
			return nil, nil, fmt.Errorf("auditor: jetstream: %w", err)
		}
		return js, func() {}, nil
	}
	opts := append([]nats.Option{nats.Name("vigil-auditor"), nats.MaxReconnects(-1)}, cfg.NATSOptions...)
	nc, err := nats.Connect(cfg.NATSURL, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("auditor: connect %s: %w", cfg.NATSURL, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("auditor: jetstream: %w", err)
	}
	return js, func() { _ = nc.Drain() }, nil
}
