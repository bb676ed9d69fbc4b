package events_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

func streamInfos(t *testing.T, ctx context.Context, js jetstream.JetStream) map[string]*jetstream.StreamInfo {
	t.Helper()
	out := map[string]*jetstream.StreamInfo{}
	for _, cfg := range events.Streams(events.Topology{}) {
		s, err := js.Stream(ctx, cfg.Name)
		if err != nil {
			t.Fatal(err)
		}
		out[cfg.Name] = s.CachedInfo()
	}
	return out
}

func TestProvisionIsIdempotent(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream() // provisions once
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	before := streamInfos(t, ctx, js)
	if err := events.Provision(ctx, js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	after := streamInfos(t, ctx, js)
	for name, b := range before {
		a := after[name]
		if !a.Created.Equal(b.Created) {
			t.Errorf("%s re-created", name)
		}
		if a.Config.Description != b.Config.Description || a.Config.MaxAge != b.Config.MaxAge || len(a.Config.Subjects) != len(b.Config.Subjects) {
			t.Errorf("%s config changed: %+v -> %+v", name, b.Config, a.Config)
		}
	}
	for _, b := range events.Buckets(events.Topology{}) {
		kv, err := js.KeyValue(ctx, b.Bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", b.Bucket, err)
		}
		st, err := kv.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.History() != int64(b.History) {
			t.Errorf("bucket %s history %d, want %d", b.Bucket, st.History(), b.History)
		}
	}
}

func TestProvisionUpgradesOlderConfig(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// An older release: shorter retention, no deny-purge on checkpoints.
	old := events.Streams(events.Topology{})
	for i := range old {
		old[i].Description = "older release"
		switch old[i].Name {
		case events.StreamEvents:
			old[i].MaxAge = 24 * time.Hour
			old[i].DenyDelete, old[i].DenyPurge = false, false
		case events.StreamCheckpoints:
			old[i].DenyPurge = false
		}
		if _, err := js.CreateStream(ctx, old[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := events.Provision(ctx, js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	infos := streamInfos(t, ctx, js)
	ev := infos[events.StreamEvents].Config
	if ev.MaxAge != 30*24*time.Hour {
		t.Errorf("VIGIL_EVENTS max age %s after upgrade", ev.MaxAge)
	}
	if !ev.DenyPurge || !ev.DenyDelete {
		t.Errorf("VIGIL_EVENTS deny delete/purge = %v/%v after upgrade", ev.DenyDelete, ev.DenyPurge)
	}
	cp := infos[events.StreamCheckpoints].Config
	if !cp.DenyPurge || !cp.DenyDelete {
		t.Errorf("VIGIL_CHECKPOINTS deny delete/purge = %v/%v after upgrade", cp.DenyDelete, cp.DenyPurge)
	}
}

func TestProvisionRefusesIncompatibleStream(t *testing.T) {
	srv := natstest.Start(t)
	nc := srv.Connect()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: events.StreamJobs, Subjects: []string{events.SubjectJobsAll}, Retention: jetstream.LimitsPolicy}); err != nil {
		t.Fatal(err)
	}
	err = events.Provision(ctx, js, events.Topology{})
	if !errors.Is(err, events.ErrIncompatibleConfig) {
		t.Fatalf("err = %v, want ErrIncompatibleConfig", err)
	}
}

// TestProvisionRevertsHistoryLimits: someone with stream edit rights sets a
// limit that drops history (VIGIL_CHECKPOINTS keeping one message erases
// every earlier signed checkpoint; a short age on VIGIL_EVENTS expires
// events before the auditor logs them). The next provisioning, which every
// service runs at start, puts the definition back.
func TestProvisionRevertsHistoryLimits(t *testing.T) {
	type limits struct {
		maxMsgs, maxBytes, maxPerSubject int64
		maxAge                           time.Duration
		discard                          jetstream.DiscardPolicy
		retention                        jetstream.RetentionPolicy
		rollup                           bool
	}
	of := func(c jetstream.StreamConfig) limits {
		return limits{c.MaxMsgs, c.MaxBytes, c.MaxMsgsPerSubject, c.MaxAge, c.Discard, c.Retention, c.AllowRollup}
	}
	for _, tc := range []struct {
		name   string
		stream string
		edit   func(*jetstream.StreamConfig)
	}{
		{"checkpoints max msgs 1", events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 }},
		{"checkpoints max bytes", events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxBytes = 4096 }},
		{"checkpoints max age", events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour }},
		{"checkpoints one per subject", events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 }},
		{"checkpoints discard new", events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxMsgs, c.Discard = 10, jetstream.DiscardNew }},
		{"events max age", events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour }},
		{"events max msgs", events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgs = 10 }},
		{"events interest retention", events.StreamEvents, func(c *jetstream.StreamConfig) { c.Retention = jetstream.InterestPolicy }},
		{"alerts max msgs per subject", events.StreamAlerts, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 }},
		{"raw rollups", events.StreamRaw, func(c *jetstream.StreamConfig) { c.AllowRollup = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			_, js := srv.JetStream()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			defined := streamInfos(t, ctx, js)[tc.stream].Config
			edited := defined
			tc.edit(&edited)
			if _, err := js.UpdateStream(ctx, edited); err != nil {
				t.Fatalf("edit: %v", err)
			}
			if got := streamInfos(t, ctx, js)[tc.stream].Config; of(got) == of(defined) {
				t.Fatalf("the edit did not change the stream: %+v", of(got))
			}
			if err := events.Provision(ctx, js, events.Topology{}); err != nil {
				t.Fatal(err)
			}
			if got := streamInfos(t, ctx, js)[tc.stream].Config; of(got) != of(defined) {
				t.Errorf("after provisioning %+v, want the definition's %+v", of(got), of(defined))
			}
		})
	}
}

// TestProvisionRefusesIrreversibleChange: an edit the server cannot undo in
// place is reported, naming the field, rather than left in place silently.
func TestProvisionRefusesIrreversibleChange(t *testing.T) {
	for _, tc := range []struct {
		name, stream, field string
		edit                func(*jetstream.StreamConfig)
	}{
		{"events sealed", events.StreamEvents, "sealed", func(c *jetstream.StreamConfig) { c.Sealed = true }},
		{"events message TTLs", events.StreamEvents, "allow_msg_ttl", func(c *jetstream.StreamConfig) { c.AllowMsgTTL = true }},
		{"raw deny purge", events.StreamRaw, "deny_purge", func(c *jetstream.StreamConfig) { c.DenyPurge = true }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			_, js := srv.JetStream()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cfg := streamInfos(t, ctx, js)[tc.stream].Config
			tc.edit(&cfg)
			if _, err := js.UpdateStream(ctx, cfg); err != nil {
				t.Fatalf("edit: %v", err)
			}
			err := events.Provision(ctx, js, events.Topology{})
			if !errors.Is(err, events.ErrIncompatibleConfig) || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v, want ErrIncompatibleConfig naming %s", err, tc.field)
			}
		})
	}
}

// TestAuditedStreamsRefuseDeleteAndPurge: neither a signed checkpoint nor an
// event the auditor is to log can be removed through the stream API.
func TestAuditedStreamsRefuseDeleteAndPurge(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	for _, tc := range []struct{ stream, subject string }{
		{events.StreamCheckpoints, events.SubjectCheckpoint},
		{events.StreamEvents, events.PolicySubject("p", "test")},
	} {
		t.Run(tc.stream, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			ack, err := js.Publish(ctx, tc.subject, []byte("message"))
			if err != nil {
				t.Fatal(err)
			}
			s, err := js.Stream(ctx, tc.stream)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.DeleteMsg(ctx, ack.Sequence); err == nil {
				t.Error("deleting a message succeeded")
			}
			if err := s.SecureDeleteMsg(ctx, ack.Sequence); err == nil {
				t.Error("erasing a message succeeded")
			}
			if err := s.Purge(ctx); err == nil {
				t.Error("purging the stream succeeded")
			}
			if err := s.Purge(ctx, jetstream.WithPurgeSubject(tc.subject)); err == nil {
				t.Error("purging the subject succeeded")
			}
			if _, err := s.GetMsg(ctx, ack.Sequence); err != nil {
				t.Errorf("message gone: %v", err)
			}
		})
	}
}

func TestProvisionNeverLowersReplicas(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.StartCluster(t, 3)
	js, err := jetstream.New(c.Connect())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A deployment made with three replicas...
	r3 := events.Topology{Replicas: 3}
	for _, cfg := range events.Streams(r3) {
		if cfg.Name == events.StreamJobs {
			if _, err := js.CreateStream(ctx, cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, cfg := range events.Buckets(r3) {
		if cfg.Bucket == events.BucketStatus {
			if _, err := js.CreateKeyValue(ctx, cfg); err != nil {
				t.Fatal(err)
			}
		}
	}
	// ...and a service started with the default of one.
	if err := events.Provision(ctx, js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	infos := streamInfos(t, ctx, js)
	if got := infos[events.StreamJobs].Config.Replicas; got != 3 {
		t.Errorf("%s has %d replicas after provisioning with 1, want 3 kept", events.StreamJobs, got)
	}
	if got := infos[events.StreamEvents].Config.Replicas; got != 1 {
		t.Errorf("%s (new) has %d replicas, want 1", events.StreamEvents, got)
	}
	kv, err := js.KeyValue(ctx, events.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.(*jetstream.KeyValueBucketStatus).StreamInfo().Config.Replicas; got != 3 {
		t.Errorf("bucket %s has %d replicas after provisioning with 1, want 3 kept", events.BucketStatus, got)
	}
	// Provisioning again changes nothing.
	if err := events.Provision(ctx, js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
}

// TestCheckTopology: a service that may not provision checks the topology
// with stream lookups; each missing or different stream or bucket is
// named with how it differs, and Provision makes the check pass.
func TestCheckTopology(t *testing.T) {
	for _, tc := range []struct {
		name      string
		provision bool
		edit      func(t *testing.T, ctx context.Context, js jetstream.JetStream)
		only      []string
		want      []string // substrings of the error; none: no error
	}{
		{name: "provisioned", provision: true},
		{name: "nothing provisioned", want: []string{"stream VIGIL_RAW is missing", "stream VIGIL_SCHEDULE is missing", "bucket vigil-vms is missing", "bucket vigil-keyguard-nonces is missing"}},
		{name: "only the streams asked for", only: []string{events.StreamEvents, events.BucketVMs}, want: []string{"stream VIGIL_EVENTS is missing", "bucket vigil-vms is missing"}},
		{name: "others not asked for", provision: true, only: []string{events.StreamEvents},
			edit: editStream(events.StreamAlerts, func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour })},
		{name: "shorter age", provision: true, want: []string{"stream VIGIL_EVENTS differs (have/want): max_age 1h0m0s/720h0m0s"},
			edit: editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxAge = time.Hour })},
		{name: "other subjects", provision: true, want: []string{"stream VIGIL_ALERTS differs (have/want): subjects [vigil.alert.*.*]/[vigil.alert.>]"},
			edit: editStream(events.StreamAlerts, func(c *jetstream.StreamConfig) { c.Subjects = []string{"vigil.alert.*.*"} })},
		{name: "description ignored", provision: true,
			edit: editStream(events.StreamRaw, func(c *jetstream.StreamConfig) { c.Description = "edited" })},
		{name: "bucket history", provision: true, want: []string{"bucket vigil-status differs (have/want): history 1/5"},
			edit: func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
				for _, b := range events.Buckets(events.Topology{}) {
					if b.Bucket == events.BucketStatus {
						b.History = 1
						if _, err := js.UpdateKeyValue(ctx, b); err != nil {
							t.Fatal(err)
						}
					}
				}
			}},
		{name: "stream deleted", provision: true, want: []string{"stream VIGIL_JOBS is missing"},
			edit: func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
				if err := js.DeleteStream(ctx, events.StreamJobs); err != nil {
					t.Fatal(err)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := natstest.Start(t)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			var js jetstream.JetStream
			if tc.provision {
				_, js = srv.JetStream()
			} else {
				var err error
				if js, err = jetstream.New(srv.Connect()); err != nil {
					t.Fatal(err)
				}
			}
			if tc.edit != nil {
				tc.edit(t, ctx, js)
			}
			err := events.CheckTopology(ctx, js, events.Topology{}, tc.only...)
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("CheckTopology = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, events.ErrTopology) {
				t.Fatalf("CheckTopology = %v, want ErrTopology", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("CheckTopology = %v\nwant it to say %q", err, w)
				}
			}
			if len(tc.only) > 0 && strings.Count(err.Error(), "missing") != len(tc.only) {
				t.Errorf("CheckTopology = %v, want only %v", err, tc.only)
			}
			if err := events.Provision(ctx, js, events.Topology{}); err != nil {
				t.Fatal(err)
			}
			if err := events.CheckTopology(ctx, js, events.Topology{}, tc.only...); err != nil {
				t.Fatalf("after Provision CheckTopology = %v", err)
			}
		})
	}
}

func editStream(name string, edit func(*jetstream.StreamConfig)) func(*testing.T, context.Context, jetstream.JetStream) {
	return func(t *testing.T, ctx context.Context, js jetstream.JetStream) {
		t.Helper()
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		edit(&cfg)
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatalf("edit %s: %v", name, err)
		}
	}
}
