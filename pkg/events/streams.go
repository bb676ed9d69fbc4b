package events

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Stream names.
const (
	StreamRaw         = "VIGIL_RAW"
	StreamEvents      = "VIGIL_EVENTS"
	StreamJobs        = "VIGIL_JOBS"
	StreamAlerts      = "VIGIL_ALERTS"
	StreamCheckpoints = "VIGIL_CHECKPOINTS"
	StreamSchedule    = "VIGIL_SCHEDULE"
)

// KV bucket names.
const (
	BucketVMs        = "vigil-vms"
	BucketStatus     = "vigil-status"
	BucketGrants     = "vigil-grants"
	BucketCollateral = "vigil-collateral"

	// BucketKeyguardNonces holds keyguard's single-use key release nonces
	// (created on issue, deleted with a revision check on use, expiring by
	// the bucket's TTL).
	BucketKeyguardNonces = "vigil-keyguard-nonces"
	// BucketKeyguardSecrets holds the local release service's secrets,
	// encrypted under keyguard's master key.
	BucketKeyguardSecrets = "vigil-keyguard-secrets"
)

// Topology says how the streams and buckets are laid out on a server or
// cluster. The zero value means one replica on file storage.
type Topology struct {
	Replicas int // 1 (default) or 3 on a cluster
}

func (t Topology) replicas() int {
	if t.Replicas <= 0 {
		return 1
	}
	return t.Replicas
}

// Streams returns every stream definition of DESIGN.md §2.
func Streams(t Topology) []jetstream.StreamConfig {
	r := t.replicas()
	return []jetstream.StreamConfig{
		{
			Name:        StreamRaw,
			Description: "Raw inbound Azure events, untouched",
			Subjects:    []string{SubjectRawAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      7 * 24 * time.Hour,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Duplicates:  10 * time.Minute,
			MaxMsgSize:  MaxEnvelopeSize,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        StreamEvents,
			Description: "Vigil VM and policy events (lifecycle, config, verdict, state, key, policy)",
			Subjects:    []string{SubjectEventsAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Duplicates:  10 * time.Minute,
			MaxMsgSize:  MaxEnvelopeSize,
			Discard:     jetstream.DiscardOld,
		},
		{
			// One pending job per VM: DiscardNew per subject with one
			// message per subject absorbs a second job for a VM that
			// already has one pending (see PublishJob).
			Name:                 StreamJobs,
			Description:          "Attestation jobs, at most one pending per VM",
			Subjects:             []string{SubjectJobsAll},
			Retention:            jetstream.WorkQueuePolicy,
			MaxMsgsPerSubject:    1,
			Discard:              jetstream.DiscardNew,
			DiscardNewPerSubject: true,
			Storage:              jetstream.FileStorage,
			Replicas:             r,
			Duplicates:           2 * time.Minute,
			MaxMsgSize:           64 << 10,
		},
		{
			Name:        StreamAlerts,
			Description: "Alerts for subscribers",
			Subjects:    []string{SubjectAlertsAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Duplicates:  2 * time.Minute,
			MaxMsgSize:  256 << 10,
			Discard:     jetstream.DiscardOld,
		},
		{
			Name:        StreamCheckpoints,
			Description: "Signed audit log checkpoints; never deleted or purged",
			Subjects:    []string{SubjectCheckpoint},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			DenyDelete:  true,
			DenyPurge:   true,
			MaxMsgSize:  64 << 10,
			Discard:     jetstream.DiscardOld,
		},
		{
			// The re-attestation schedule: one message schedule (nats-server
			// 2.12+, "Nats-Schedule: @at ...") per VM on vigil.schedule.vm.<vm>
			// fires into vigil.schedule.due.<vm>, where the attest-worker
			// turns it into a job on VIGIL_JOBS. A scheduled message must fire
			// into its own stream, and schedules rule out DiscardNew, so they
			// cannot live in VIGIL_JOBS. Publishing a new schedule for a VM
			// rolls up (replaces) its previous one. Work-queue retention drops
			// a fired message once it is acknowledged.
			Name:              StreamSchedule,
			Description:       "Re-attestation schedule: one pending schedule per VM and the fired schedules",
			Subjects:          []string{SubjectScheduleAll},
			Retention:         jetstream.WorkQueuePolicy,
			MaxMsgsPerSubject: 1,
			AllowMsgSchedules: true,
			AllowRollup:       true,
			Storage:           jetstream.FileStorage,
			Replicas:          r,
			Duplicates:        2 * time.Minute,
			MaxMsgSize:        64 << 10,
			Discard:           jetstream.DiscardOld,
		},
	}
}

// Buckets returns every KV bucket definition of DESIGN.md §2.
func Buckets(t Topology) []jetstream.KeyValueConfig {
	r := t.replicas()
	return []jetstream.KeyValueConfig{
		{Bucket: BucketVMs, Description: "VM inventory by VM key", History: 1, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 256 << 10},
		{Bucket: BucketStatus, Description: "Attestation status by VM key", History: 5, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 64 << 10},
		{Bucket: BucketGrants, Description: "Key release grants", History: 5, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 64 << 10},
		{Bucket: BucketCollateral, Description: "AMD and Intel certificate and collateral cache", History: 1, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 1 << 20},
		// Each nonce expires with its own TTL (LimitMarkerTTL allows per-key
		// TTLs; the bucket's TTL is a backstop); MaxBytes bounds the bucket.
		{Bucket: BucketKeyguardNonces, Description: "Single-use key release nonces", History: 1, TTL: 5 * time.Minute, LimitMarkerTTL: time.Second,
			Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 1 << 10, MaxBytes: 64 << 20},
		{Bucket: BucketKeyguardSecrets, Description: "Key release secrets, encrypted under the keyguard master key", History: 5, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 256 << 10},
	}
}

// ErrIncompatibleConfig is returned when an existing stream's configuration
// differs from the definition in a way NATS cannot update in place (for
// example its retention policy or storage type).
var ErrIncompatibleConfig = errors.New("existing configuration cannot be upgraded in place")

// Provision creates every stream and bucket, or updates existing ones to the
// current definition where NATS allows. It is idempotent: running it twice
// changes nothing. It raises replica counts but never lowers them, so a
// service started with fewer replicas than the deployment's streams have
// (a default left in place) cannot reduce their durability; lowering them
// is an operator's deliberate act (nats stream edit).
func Provision(ctx context.Context, js jetstream.JetStream, t Topology) error {
	for _, cfg := range Streams(t) {
		if err := provisionStream(ctx, js, cfg); err != nil {
			return err
		}
	}
	for _, cfg := range Buckets(t) {
		if err := provisionBucket(ctx, js, cfg); err != nil {
			return err
		}
	}
	return nil
}

func provisionBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) error {
	kv, err := js.KeyValue(ctx, cfg.Bucket)
	switch {
	case err == nil:
		st, err := kv.Status(ctx)
		if err != nil {
			return fmt.Errorf("events: look up bucket %s: %w", cfg.Bucket, err)
		}
		if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
			cfg.Replicas = max(cfg.Replicas, bs.StreamInfo().Config.Replicas)
		}
	case !errors.Is(err, jetstream.ErrBucketNotFound):
		return fmt.Errorf("events: look up bucket %s: %w", cfg.Bucket, err)
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, cfg); err != nil {
		return fmt.Errorf("events: provision bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}

func provisionStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			return fmt.Errorf("events: create stream %s: %w", cfg.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("events: look up stream %s: %w", cfg.Name, err)
	}
	have := s.CachedInfo().Config
	cfg.Replicas = max(cfg.Replicas, have.Replicas)
	if have.Retention != cfg.Retention || have.Storage != cfg.Storage {
		return fmt.Errorf("events: stream %s: %w: retention %s/%s, storage %s/%s (have/want)",
			cfg.Name, ErrIncompatibleConfig, have.Retention, cfg.Retention, have.Storage, cfg.Storage)
	}
	if sameStreamConfig(have, cfg) {
		return nil
	}
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		return fmt.Errorf("events: update stream %s: %w", cfg.Name, err)
	}
	return nil
}

// sameStreamConfig compares the fields Vigil sets, so that provisioning an
// up-to-date stream issues no update.
func sameStreamConfig(a, b jetstream.StreamConfig) bool {
	if len(a.Subjects) != len(b.Subjects) {
		return false
	}
	for i := range a.Subjects {
		if a.Subjects[i] != b.Subjects[i] {
			return false
		}
	}
	maxOr := func(v int64) int64 {
		if v == 0 {
			return -1
		}
		return v
	}
	return a.Description == b.Description &&
		a.MaxAge == b.MaxAge &&
		a.Replicas == b.Replicas &&
		(a.Duplicates == b.Duplicates || b.Duplicates == 0) &&
		a.MaxMsgSize == b.MaxMsgSize &&
		a.Discard == b.Discard &&
		a.DiscardNewPerSubject == b.DiscardNewPerSubject &&
		maxOr(a.MaxMsgsPerSubject) == maxOr(b.MaxMsgsPerSubject) &&
		a.DenyDelete == b.DenyDelete &&
		a.DenyPurge == b.DenyPurge &&
		a.AllowMsgSchedules == b.AllowMsgSchedules
}
