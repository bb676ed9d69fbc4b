package auditor

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// Defaults.
const (
	DefaultConsumer            = "vigil-auditor"
	DefaultCheckpointInterval  = time.Second
	DefaultBatchSize           = 8192
	DefaultAckWait             = time.Minute
	DefaultLockPollInterval    = 200 * time.Millisecond
	DefaultStreamCheckInterval = 10 * time.Second
)

// Config configures an auditor.
type Config struct {
	// LogDir is the log directory (C2SP tlog-tiles layout). Required.
	LogDir string
	// SignerKeyFile is the note signer key that signs checkpoints. Required.
	SignerKeyFile string
	// VerifierKeyFile is the matching public key. Optional; when set it
	// must belong to the signer key (checked at start).
	VerifierKeyFile string
	// GenerateKeys creates the key pair (SignerKeyFile and
	// VerifierKeyFile) on first run when neither exists, named Origin.
	GenerateKeys bool
	// Origin names a generated key pair: the checkpoint origin line.
	// Default auditlog.DefaultOrigin.
	Origin string

	// Options are the bus connection, provisioning, operational listener,
	// health, telemetry, logger and readiness hook every service shares.
	// The operational listener also serves the log itself, read-only in
	// the tlog-tiles layout, under /log/; the auditor is ready while it
	// writes the log.
	service.Options

	// Stream is the stream logged. Default events.StreamEvents.
	Stream string
	// Consumer is the durable consumer's name. Default "vigil-auditor".
	// Each log needs its own.
	Consumer string
	// CheckpointInterval is how often a new checkpoint is signed (when the
	// log grew) and published on vigil.audit.checkpoint. Default 1 s,
	// minimum 100 ms.
	CheckpointInterval time.Duration
	// BatchSize is the most messages written to the log in one durable
	// batch. Default DefaultBatchSize (8192).
	BatchSize int
	// AckWait is the consumer's ack wait. Default 1 min.
	AckWait time.Duration
	// LockPollInterval is how often a standby tries to take over the log.
	// Default 200 ms.
	LockPollInterval time.Duration
	// StreamCheckInterval is how often the writer checks that history is
	// still there: that VIGIL_CHECKPOINTS starts at sequence 1 and that
	// Stream did not drop messages the auditor has not logged (see
	// AlertCheckpointsLost, AlertEventsLost). Default 10 s, minimum 100 ms.
	StreamCheckInterval time.Duration

	// OnRole, if set, is called when the auditor's role changes:
	// RoleStandby while another auditor holds the log, RoleWriter once it
	// writes the log.
	OnRole func(Role)
}

// Role is what an auditor currently does.
type Role string

// Roles.
const (
	RoleStandby Role = "standby"
	RoleWriter  Role = "writer"
)

// minCheckpointInterval is Tessera's POSIX driver's minimum.
const minCheckpointInterval = 100 * time.Millisecond

// minStreamCheckInterval bounds the stream info requests of the checks.
const minStreamCheckInterval = 100 * time.Millisecond

// ErrConfig wraps configuration errors.
var ErrConfig = errors.New("auditor: invalid configuration")

// ErrStreamMismatch means the log is ahead of the stream it logs: the
// stream was recreated (its sequences restarted) or the log is another
// stream's. The auditor refuses to write rather than skip messages; start
// a new log directory (and keep the old one) for the new stream.
var ErrStreamMismatch = errors.New("auditor: the log does not belong to this stream")

func (c *Config) withDefaults() (Config, error) {
	cfg := *c
	if cfg.LogDir == "" {
		return cfg, fmt.Errorf("%w: LogDir is required", ErrConfig)
	}
	if cfg.SignerKeyFile == "" {
		return cfg, fmt.Errorf("%w: SignerKeyFile is required", ErrConfig)
	}
	if cfg.GenerateKeys && cfg.VerifierKeyFile == "" {
		return cfg, fmt.Errorf("%w: GenerateKeys needs VerifierKeyFile", ErrConfig)
	}
	if cfg.Origin == "" {
		cfg.Origin = auditlog.DefaultOrigin
	}
	if cfg.Stream == "" {
		cfg.Stream = events.StreamEvents
	}
	if cfg.Consumer == "" {
		cfg.Consumer = DefaultConsumer
	}
	if cfg.CheckpointInterval == 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.CheckpointInterval < minCheckpointInterval {
		return cfg, fmt.Errorf("%w: CheckpointInterval %v is below the minimum of %v", ErrConfig, cfg.CheckpointInterval, minCheckpointInterval)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.BatchSize < 1 || cfg.BatchSize > 1<<16 {
		return cfg, fmt.Errorf("%w: BatchSize %d outside 1..65536", ErrConfig, cfg.BatchSize)
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.LockPollInterval <= 0 {
		cfg.LockPollInterval = DefaultLockPollInterval
	}
	if cfg.StreamCheckInterval == 0 {
		cfg.StreamCheckInterval = DefaultStreamCheckInterval
	}
	if cfg.StreamCheckInterval < minStreamCheckInterval {
		return cfg, fmt.Errorf("%w: StreamCheckInterval %v is below the minimum of %v", ErrConfig, cfg.StreamCheckInterval, minStreamCheckInterval)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// EnsureKeys creates the checkpoint signing key pair at signerPath and
// verifierPath, named origin, unless it exists (see
// auditlog.EnsureKeyFiles). `vigil dev` uses <data>/audit/signer.key and
// <data>/audit/signer.pub.
func EnsureKeys(signerPath, verifierPath, origin string) error {
	return auditlog.EnsureKeyFiles(signerPath, verifierPath, origin)
}
