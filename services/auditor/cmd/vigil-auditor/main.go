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
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/auditor"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-auditor:", err)
		if errors.Is(err, auditor.ErrConfig) || errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run() error {
	fs := flag.NewFlagSet("vigil-auditor", flag.ContinueOnError)
	str := func(name, def, usage string) *string {
		return fs.String(name, env(name, def), usage+" (env "+envName(name)+")")
	}
	var (
		natsURL   = str("nats-url", bus.DefaultURL, "NATS server URL(s), comma separated")
		natsCreds = str("nats-creds", "", "NATS credentials file")
		natsCA    = str("nats-ca", "", "CA file for NATS TLS")
		natsCert  = str("nats-cert", "", "client certificate for NATS TLS")
		natsKey   = str("nats-key", "", "client key for NATS TLS")
		replicas  = str("replicas", "1", "stream and bucket replicas (3 on a cluster)")
		logDir    = str("log-dir", "", "audit log directory (required)")
		signer    = str("signer-key", "", "checkpoint signer key file (required)")
		verifier  = str("verifier-key", "", "the signer's public key file (checked to match; written when missing)")
		genKeys   = str("generate-keys", "false", "create the key pair on first run if neither file exists")
		origin    = str("origin", auditlog.DefaultOrigin, "key name (checkpoint origin) of a generated key pair")
		interval  = str("checkpoint-interval", auditor.DefaultCheckpointInterval.String(), "how often checkpoints are signed and published")
		batch     = str("batch-size", strconv.Itoa(auditor.DefaultBatchSize), "most messages written in one durable batch")
		consumer  = str("consumer", auditor.DefaultConsumer, "durable consumer name (one per log)")
		httpAddr  = str("http", ":8083", "listen address of /healthz, /readyz, /metrics and the read-only log under /log/")
		logLevel  = str("log-level", "info", "log level: debug, info, warn, error")
	)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	level, err := telemetry.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log := telemetry.Logger("vigil-auditor", os.Stderr, level)
	auditor.RouteTesseraLogs(log.With("component", "tessera"))

	every, err := time.ParseDuration(*interval)
	if err != nil {
		return fmt.Errorf("%w: -checkpoint-interval: %w", errUsage, err)
	}
	batchSize, err := strconv.Atoi(*batch)
	if err != nil {
		return fmt.Errorf("%w: -batch-size: %w", errUsage, err)
	}
	gen, err := strconv.ParseBool(*genKeys)
	if err != nil {
		return fmt.Errorf("%w: -generate-keys: %w", errUsage, err)
	}
	topoReplicas, err := strconv.Atoi(*replicas)
	if err != nil || (topoReplicas != 1 && topoReplicas != 3) {
		return fmt.Errorf("%w: -replicas must be 1 or 3", errUsage)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-auditor", SetGlobal: true, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()

	cfg := auditor.Config{
		LogDir:             *logDir,
		SignerKeyFile:      *signer,
		VerifierKeyFile:    *verifier,
		GenerateKeys:       gen,
		Origin:             *origin,
		NATS:               bus.Config{URL: *natsURL, CredsFile: *natsCreds, TLSCAFile: *natsCA, TLSCertFile: *natsCert, TLSKeyFile: *natsKey},
		Consumer:           *consumer,
		CheckpointInterval: every,
		BatchSize:          batchSize,
		HTTPAddr:           *httpAddr,
		Logger:             log,
		Telemetry:          tel,
	}
	cfg.Topology.Replicas = topoReplicas
	return auditor.Run(ctx, cfg)
}

func envName(flagName string) string {
	return "VIGIL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func env(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
}
