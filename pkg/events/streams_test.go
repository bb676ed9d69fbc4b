package events_test

import (
	"context"
	"errors"
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
	if got := infos[events.StreamEvents].Config.MaxAge; got != 30*24*time.Hour {
		t.Errorf("VIGIL_EVENTS max age %s after upgrade", got)
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

func TestCheckpointsDenyDeleteAndPurge(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, events.SubjectCheckpoint, []byte("checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := js.Stream(ctx, events.StreamCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, ack.Sequence); err == nil {
		t.Error("deleting a checkpoint succeeded")
	}
	if err := s.Purge(ctx); err == nil {
		t.Error("purging checkpoints succeeded")
	}
	if _, err := s.GetMsg(ctx, ack.Sequence); err != nil {
		t.Errorf("checkpoint gone: %v", err)
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
