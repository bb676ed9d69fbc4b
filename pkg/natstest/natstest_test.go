package natstest_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
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

// TestOperatorModeRestartKeepsRevocation: a server in operator mode
// restarted after a revocation still refuses the revoked agent, and lets
// the principals in.
func TestOperatorModeRestartKeepsRevocation(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	s := natstest.StartOperator(t, set)
	s.JetStream()
	agent, err := set.AgentCreds("aaaaaaaaaaaaaaaaaaaaaaaaaa", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := set.Revoke(agent.PublicKey()); err != nil {
		t.Fatal(err)
	}
	s.UpdateAccount()
	s.Restart()
	if nc, err := nats.Connect(s.URL(), nats.UserJWTAndSeed(agent.JWT, agent.Seed), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("the revoked agent connected after a restart")
	}
	nc := s.ConnectAs(busauth.Ingest)
	if err := nc.Publish(events.RawSubject("eventgrid"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil || nc.LastError() != nil {
		t.Fatalf("ingest after the restart: %v, %v", err, nc.LastError())
	}
	s.ConnectAgent("bbbbbbbbbbbbbbbbbbbbbbbbbb").Close()
}
