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
