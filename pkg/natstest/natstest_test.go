package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

func TestSingleServerRestartKeepsData(t *testing.T) {
	s := natstest.Start(t)
	_, js := s.JetStream()
	ctx := context.Background()
	if _, err := js.Publish(ctx, events.LifecycleSubject("abc"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	s.Restart()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := js.Stream(ctx, events.StreamEvents)
		if err == nil && st.CachedInfo().State.Msgs == 1 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream after restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestClusterHasStreamLeader(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	c := natstest.StartCluster(t, 3)
	nc := c.Connect()
	js := natstest.Provision(t, nc, events.Topology{Replicas: 3})
	ctx := context.Background()
	if _, err := js.Publish(ctx, events.LifecycleSubject("abc"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	leader := c.StreamLeader(events.StreamEvents, 10*time.Second)
	leader.Stop()
	var err error
	for i := 0; i < 100; i++ {
		if _, err = js.Publish(ctx, events.LifecycleSubject("abc"), []byte("{}"), jetstream.WithRetryAttempts(10)); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("publish after leader loss: %v", err)
	}
}
