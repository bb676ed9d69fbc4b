package events

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
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
	// StreamAlertsDLQ holds the alerts the notifier gave up delivering to
	// a subscription (vigil alerts dlq list|replay).
	StreamAlertsDLQ = "VIGIL_ALERTS_DLQ"
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
	// BucketAgents holds, per VM key, the agent credentials keyguard
	// issued by enrollment and revoked (docs/design.md §19).
	BucketAgents = "vigil-agents"
	// BucketAlertSubscriptions holds the alert subscriptions by id, their
	// sink secrets encrypted under the notifier's key (docs/alerts.md).
	BucketAlertSubscriptions = "vigil-alert-subscriptions"
	// BucketAlertState holds the notifier's state: the last state of each
	// alert key (a late firing is never delivered after its resolve) and
	// each subscription's health.
	BucketAlertState = "vigil-alert-state"
	// BucketAlertSilences holds the alert silences by id.
	BucketAlertSilences = "vigil-alert-silences"
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

// Streams returns every stream definition of docs/design.md §3.
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
			// The auditor logs every message; one removed before it got
			// there leaves a gap in the log. Nothing in Vigil deletes or
			// purges events (they leave by age only), so the stream
			// refuses both. The server cannot lift either flag again.
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
			DenyDelete:  true,
			DenyPurge:   true,
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
		{
			Name:        StreamAlertsDLQ,
			Description: "Alerts the notifier gave up delivering, by subscription",
			Subjects:    []string{SubjectAlertsDLQAll},
			Retention:   jetstream.LimitsPolicy,
			MaxAge:      30 * 24 * time.Hour,
			Storage:     jetstream.FileStorage,
			Replicas:    r,
			Duplicates:  2 * time.Minute,
			MaxMsgSize:  512 << 10,
			Discard:     jetstream.DiscardOld,
		},
	}
}

// Buckets returns every KV bucket definition of docs/design.md §4.
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
		{Bucket: BucketAgents, Description: "Agent bus credentials issued by enrollment, and their revocation", History: 5, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 64 << 10},
		{Bucket: BucketAlertSubscriptions, Description: "Alert subscriptions, sink secrets encrypted under the notifier key", History: 10, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 64 << 10},
		{Bucket: BucketAlertState, Description: "Notifier state: last state per alert key, subscription health", History: 1, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 256 << 10},
		{Bucket: BucketAlertSilences, Description: "Alert silences", History: 5, Storage: jetstream.FileStorage, Replicas: r, MaxValueSize: 64 << 10},
	}
}

// ErrIncompatibleConfig is returned when an existing stream's configuration
// differs from the definition in a way NATS cannot update in place (for
// example its storage type, a retention policy to or from work queue, a
// seal, or a deny flag or message TTLs the definition does not have).
var ErrIncompatibleConfig = errors.New("existing configuration cannot be upgraded in place")

// Provision creates every stream and bucket, or updates existing ones to the
// current definition where NATS allows. It is idempotent: running it twice
// changes nothing. Every field of a stream that bounds its history (limits,
// discard policy, deny flags, rollups, message TTLs, sources, ...) is put
// back to the definition, whether the definition sets it or leaves it at
// its default, so that an edit which trims history (VIGIL_CHECKPOINTS set
// to keep one message, a shorter age on VIGIL_EVENTS) does not outlive the
// next service start; a change the server cannot undo in place (a seal, a
// deny flag or message TTLs on a stream that should not have them) fails
// with ErrIncompatibleConfig. It raises replica counts but never lowers them, so a
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
	if err := whilePlacing(ctx, func() error { _, err := js.CreateOrUpdateKeyValue(ctx, cfg); return err }); err != nil {
		return fmt.Errorf("events: provision bucket %s: %w", cfg.Bucket, err)
	}
	return nil
}

func provisionStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) error {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if err := whilePlacing(ctx, func() error { _, err := js.CreateStream(ctx, cfg); return err }); err != nil {
			return fmt.Errorf("events: create stream %s: %w", cfg.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("events: look up stream %s: %w", cfg.Name, err)
	}
	have := s.CachedInfo().Config
	cfg.Replicas = max(cfg.Replicas, have.Replicas)
	diffs := streamConfigDiff(have, cfg)
	if len(diffs) == 0 {
		return nil
	}
	var permanent []configDiff
	for _, d := range diffs {
		if d.permanent {
			permanent = append(permanent, d)
		}
	}
	if len(permanent) > 0 {
		return fmt.Errorf("events: stream %s: %w: %s (have/want); the server cannot change this back: recreate the stream deliberately",
			cfg.Name, ErrIncompatibleConfig, joinDiffs(permanent))
	}
	if err := whilePlacing(ctx, func() error { _, err := js.UpdateStream(ctx, cfg); return err }); err != nil {
		return fmt.Errorf("events: update stream %s (%s, have/want): %w", cfg.Name, joinDiffs(diffs), err)
	}
	return nil
}

// codeNoPeers is JetStream's "no suitable peers for placement": too few
// servers are online for the replicas asked for. On a cluster that has
// just formed (or is restarting a node) the meta leader counts a server
// online only once it has heard from it, so the answer is transient there.
const codeNoPeers jetstream.ErrorCode = 10005

// whilePlacing runs op, again every placeRetry while the cluster answers
// that it has too few servers online, until ctx ends; the error then
// includes the cluster's last answer.
func whilePlacing(ctx context.Context, op func() error) error {
	const placeRetry = 250 * time.Millisecond
	var placing error
	for {
		err := op()
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != codeNoPeers {
			if err != nil && placing != nil {
				return fmt.Errorf("%w (the cluster answered before: %w)", err, placing)
			}
			return err
		}
		placing = err
		select {
		case <-ctx.Done():
			return err
		case <-time.After(placeRetry):
		}
	}
}

// configDiff is one field in which a stream's stored configuration differs
// from its definition.
type configDiff struct {
	field      string
	have, want any
	// permanent: the server refuses to change the field back in place
	// (storage, retention to or from work queue, a seal, deny flags,
	// message TTLs, schedules and counters once enabled, persist mode).
	permanent bool
}

func (d configDiff) String() string { return fmt.Sprintf("%s %v/%v", d.field, d.have, d.want) }

func joinDiffs(ds []configDiff) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = d.String()
	}
	return strings.Join(parts, ", ")
}

// streamConfigDiff lists the fields in which have, a stream's configuration
// as the server stores it, differs from want, its definition (with the
// replica count never lowered already applied). It covers every field that
// decides which messages the stream accepts and how long it keeps them,
// whether the definition sets it or leaves it at its default: a change to
// any of them (a limit, the discard policy, a deny flag, rollups or message
// TTLs, a seal, sources, a subject transform) can drop or keep out history,
// and provisioning puts it back. Fields that only tune the server (placement,
// compression, direct gets, metadata, consumer limits) are the operator's.
func streamConfigDiff(have, want jetstream.StreamConfig) []configDiff {
	var ds []configDiff
	diff := func(field string, h, w any, permanent bool) {
		ds = append(ds, configDiff{field: field, have: h, want: w, permanent: permanent})
	}
	// The server stores an unset limit (0) as -1.
	limit := func(v int64) int64 {
		if v <= 0 {
			return -1
		}
		return v
	}
	check := func(field string, h, w any, permanent bool) {
		if !reflect.DeepEqual(h, w) {
			diff(field, h, w, permanent)
		}
	}
	flag := func(field string, h, w, canUnset bool) {
		if h != w {
			diff(field, h, w, h && !canUnset)
		}
	}

	check("storage", have.Storage, want.Storage, true)
	check("retention", have.Retention, want.Retention,
		have.Retention == jetstream.WorkQueuePolicy || want.Retention == jetstream.WorkQueuePolicy)
	check("persist_mode", have.PersistMode, want.PersistMode, true)
	check("allow_msg_counter", have.AllowMsgCounter, want.AllowMsgCounter, true)
	flag("sealed", have.Sealed, want.Sealed, false)
	flag("deny_delete", have.DenyDelete, want.DenyDelete, false)
	flag("deny_purge", have.DenyPurge, want.DenyPurge, false)
	flag("allow_msg_ttl", have.AllowMsgTTL, want.AllowMsgTTL, false)
	flag("allow_msg_schedules", have.AllowMsgSchedules, want.AllowMsgSchedules, false)

	if !slices.Equal(have.Subjects, want.Subjects) {
		diff("subjects", have.Subjects, want.Subjects, false)
	}
	check("description", have.Description, want.Description, false)
	check("num_replicas", have.Replicas, want.Replicas, false)
	check("max_msgs", limit(have.MaxMsgs), limit(want.MaxMsgs), false)
	check("max_bytes", limit(have.MaxBytes), limit(want.MaxBytes), false)
	check("max_age", have.MaxAge, want.MaxAge, false)
	check("max_msgs_per_subject", limit(have.MaxMsgsPerSubject), limit(want.MaxMsgsPerSubject), false)
	check("max_msg_size", limit(int64(have.MaxMsgSize)), limit(int64(want.MaxMsgSize)), false)
	check("discard", have.Discard, want.Discard, false)
	check("discard_new_per_subject", have.DiscardNewPerSubject, want.DiscardNewPerSubject, false)
	check("allow_rollup_hdrs", have.AllowRollup, want.AllowRollup, false)
	check("subject_delete_marker_ttl", have.SubjectDeleteMarkerTTL, want.SubjectDeleteMarkerTTL, false)
	// An unset window is the server's default (2 min, or MaxAge when
	// shorter); it only filters re-sent message ids.
	if want.Duplicates != 0 && have.Duplicates != want.Duplicates {
		diff("duplicate_window", have.Duplicates, want.Duplicates, false)
	}
	if len(have.Sources) > 0 || len(want.Sources) > 0 {
		check("sources", have.Sources, want.Sources, false)
	}
	check("mirror", have.Mirror, want.Mirror, false)
	check("subject_transform", have.SubjectTransform, want.SubjectTransform, false)
	return ds
}

// ErrTopology is returned by CheckTopology when a stream or bucket is
// missing or configured otherwise than Provision would configure it.
var ErrTopology = errors.New("streams and buckets are not provisioned as required")

// CheckTopology checks, with stream lookups alone ($JS.API.STREAM.INFO,
// which every service may use for its own streams), that every stream and
// bucket exists with the configuration Provision would give it: the same
// subjects, retention, limits, discard policy and flags, and at least the
// topology's replicas (Provision never lowers them). Descriptions are not
// compared. only, when given, names the streams (by stream name, buckets by
// bucket name or their KV_ stream) to check; a service checks the ones it
// uses. The error matches ErrTopology and names each missing or different
// stream or bucket and how it differs (have/want); a failed lookup is
// returned as it is.
func CheckTopology(ctx context.Context, js jetstream.JetStream, t Topology, only ...string) error {
	want := func(names ...string) bool {
		if len(only) == 0 {
			return true
		}
		for _, n := range names {
			if slices.Contains(only, n) {
				return true
			}
		}
		return false
	}
	var problems []string
	for _, cfg := range Streams(t) {
		if !want(cfg.Name) {
			continue
		}
		p, err := checkStream(ctx, js, cfg)
		if err != nil {
			return err
		}
		if p != "" {
			problems = append(problems, "stream "+cfg.Name+" "+p)
		}
	}
	for _, cfg := range Buckets(t) {
		if !want(cfg.Bucket, "KV_"+cfg.Bucket) {
			continue
		}
		p, err := checkBucket(ctx, js, cfg)
		if err != nil {
			return err
		}
		if p != "" {
			problems = append(problems, "bucket "+cfg.Bucket+" "+p)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("events: %w: %s; provision them (vigil provision)", ErrTopology, strings.Join(problems, "; "))
	}
	return nil
}

// checkStream says how the stream cfg.Name differs from cfg ("" when it
// does not).
func checkStream(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig) (string, error) {
	s, err := js.Stream(ctx, cfg.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return "is missing", nil
	}
	if err != nil {
		return "", fmt.Errorf("events: look up stream %s: %w", cfg.Name, err)
	}
	return describeDiffs(s.CachedInfo().Config, cfg), nil
}

func describeDiffs(have, want jetstream.StreamConfig) string {
	want.Replicas = max(want.Replicas, have.Replicas)
	want.Description = have.Description
	ds := streamConfigDiff(have, want)
	if len(ds) == 0 {
		return ""
	}
	return "differs (have/want): " + joinDiffs(ds)
}

// checkBucket says how the bucket cfg.Bucket differs from cfg ("" when it
// does not): its stream is compared with the one the server makes of cfg.
func checkBucket(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig) (string, error) {
	name := "KV_" + cfg.Bucket
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return "is missing", nil
	}
	if err != nil {
		return "", fmt.Errorf("events: look up bucket %s: %w", cfg.Bucket, err)
	}
	have := s.CachedInfo().Config
	var ds []configDiff
	check := func(field string, h, w any) {
		if !reflect.DeepEqual(h, w) {
			ds = append(ds, configDiff{field: field, have: h, want: w})
		}
	}
	limit := func(v int64) int64 {
		if v <= 0 {
			return -1
		}
		return v
	}
	history := int64(max(cfg.History, 1))
	check("storage", have.Storage, cfg.Storage)
	check("history", have.MaxMsgsPerSubject, history)
	check("ttl", have.MaxAge, cfg.TTL)
	check("max_value_size", limit(int64(have.MaxMsgSize)), limit(int64(cfg.MaxValueSize)))
	check("max_bytes", limit(have.MaxBytes), limit(cfg.MaxBytes))
	check("limit_marker_ttl", have.SubjectDeleteMarkerTTL, cfg.LimitMarkerTTL)
	if have.Replicas < max(cfg.Replicas, 1) {
		check("num_replicas", have.Replicas, cfg.Replicas)
	}
	if len(ds) == 0 {
		return "", nil
	}
	return "differs (have/want): " + joinDiffs(ds), nil
}
