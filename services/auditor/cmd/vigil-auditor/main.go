// Command vigil-auditor writes every Vigil event into the tamper-evident
// audit log and publishes its signed checkpoints on vigil.audit.checkpoint.
// Run two on the same log directory for a hot standby.
//
// Every flag has a VIGIL_* environment fallback (flag -log-dir reads
// VIGIL_LOG_DIR).
package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/auditor"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func main() { svcmain.Main("vigil-auditor", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-auditor", ":8083")
	logDir := f.String("log-dir", "", "audit log directory (required)")
	signer := f.String("signer-key", "", "checkpoint signer key file (required)")
	verifier := f.String("verifier-key", "", "the signer's public key file (checked to match; written when missing)")
	genKeys := f.Bool("generate-keys", false, "create the key pair on first run if neither file exists")
	origin := f.String("origin", auditlog.DefaultOrigin, "key name (checkpoint origin) of a generated key pair")
	interval := f.Duration("checkpoint-interval", auditor.DefaultCheckpointInterval, "how often checkpoints are signed and published")
	batch := f.Int("batch-size", auditor.DefaultBatchSize, "most messages written in one durable batch")
	consumer := f.String("consumer", auditor.DefaultConsumer, "durable consumer name (one per log)")
	f.Check(func() error {
		if *batch < 1 {
			return fmt.Errorf("-batch-size %d: must be at least 1", *batch)
		}
		return nil
	})
	return func(ctx context.Context, rt svcmain.Runtime) error {
		auditor.RouteTesseraLogs(rt.Logger.With("component", "tessera"))
		err := auditor.Run(ctx, auditor.Config{
			LogDir:             *logDir,
			SignerKeyFile:      *signer,
			VerifierKeyFile:    *verifier,
			GenerateKeys:       *genKeys,
			Origin:             *origin,
			Options:            options(rt),
			Consumer:           *consumer,
			CheckpointInterval: *interval,
			BatchSize:          *batch,
		})
		if errors.Is(err, auditor.ErrConfig) {
			return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
		}
		return err
	}
}
