package grants_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

func vm(name string) string {
	return events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/" + name)
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestCreateGetUpdateList(t *testing.T) {
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	ctx := ctxT(t)
	s, err := grants.Open(ctx, nc, js)
	if err != nil {
		t.Fatal(err)
	}
	a, b := vm("a"), vm("b")
	for _, g := range []grants.Grant{
		{VMKey: a, KeyName: "disk", Backend: "local", State: grants.Active, Applied: true},
		{VMKey: a, KeyName: "disk", Backend: "akv", State: grants.Active, Applied: true},
		{VMKey: b, KeyName: "disk", Backend: "local", State: grants.Active, Applied: true},
	} {
		if _, err := s.Create(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Create(ctx, grants.Grant{VMKey: a, KeyName: "disk", Backend: "local", State: grants.Active}); !errors.Is(err, grants.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	for _, bad := range []grants.Grant{
		{VMKey: "x", KeyName: "disk", Backend: "local", State: grants.Active},
		{VMKey: a, KeyName: "a.b", Backend: "local", State: grants.Active},
		{VMKey: a, KeyName: "disk", Backend: "Local", State: grants.Active},
		{VMKey: a, KeyName: "disk", Backend: "local", State: "gone"},
	} {
		if _, err := s.Create(ctx, bad); err == nil {
			t.Errorf("created invalid grant %+v", bad)
		}
	}

	got, err := s.List(ctx, a)
	if err != nil || len(got) != 2 || got[0].Backend != "akv" || got[1].Backend != "local" {
		t.Fatalf("list a: %+v, %v", got, err)
	}
	all, err := s.List(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("list all: %d, %v", len(all), err)
	}
	if _, err := s.Get(ctx, grants.Key(vm("c"), "local", "disk")); !errors.Is(err, grants.ErrNotFound) {
		t.Fatalf("missing grant: %v", err)
	}

	key := grants.Key(a, "local", "disk")
	e, wrote, err := s.Update(ctx, key, func(g *grants.Grant) (bool, error) {
		g.State, g.RevokedFor = grants.Revoked, grants.CauseUntrusted
		return true, nil
	})
	if err != nil || !wrote || e.State != grants.Revoked {
		t.Fatalf("update: %+v %t %v", e, wrote, err)
	}
	_, wrote, err = s.Update(ctx, key, func(*grants.Grant) (bool, error) { return false, nil })
	if err != nil || wrote {
		t.Fatalf("no-op update wrote: %v", err)
	}
	if _, _, err := s.Update(ctx, key, func(g *grants.Grant) (bool, error) { g.State = "bogus"; return true, nil }); err == nil {
		t.Fatal("update to an invalid state stored")
	}

	if err := s.Delete(ctx, grants.Key(b, "local", "disk")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.List(ctx, b); len(got) != 0 {
		t.Fatalf("deleted grant listed: %+v", got)
	}
}

// Concurrent writers never lose an update: each increments ApplyAttempts
// once; compare-and-set retries make the total exact.
func TestUpdateCompareAndSet(t *testing.T) {
	srv := natstest.Start(t)
	ctx := ctxT(t)
	nc, js := srv.JetStream()
	s, err := grants.Open(ctx, nc, js)
	if err != nil {
		t.Fatal(err)
	}
	g := grants.Grant{VMKey: vm("cas"), KeyName: "disk", Backend: "local", State: grants.Active}
	if _, err := s.Create(ctx, g); err != nil {
		t.Fatal(err)
	}
	const writers = 8
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Each writer on its own connection, like separate replicas.
			nc := srv.Connect()
			js, _ := jetstream.New(nc)
			s, err := grants.Open(ctx, nc, js)
			if err != nil {
				errs <- err
				return
			}
			_, _, err = s.Update(ctx, g.Key(), func(g *grants.Grant) (bool, error) {
				g.ApplyAttempts++
				return true, nil
			})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	e, err := s.Get(ctx, g.Key())
	if err != nil || e.ApplyAttempts != writers {
		t.Fatalf("ApplyAttempts = %d, want %d (%v)", e.ApplyAttempts, writers, err)
	}
}

// A write acknowledged by the cluster is seen at once by a reader attached
// to any node: the release path reads from the stream leader.
func TestLeaderReadSeesLatestWriteOnEveryNode(t *testing.T) {
	c := natstest.StartCluster(t, 3)
	nc := c.Connect()
	natstest.Provision(t, nc, events.Topology{Replicas: 3})
	// The deadline starts once the cluster is provisioned: placing R3
	// streams on a loaded machine can take most of it.
	ctx := ctxT(t)
	js, _ := jetstream.New(nc)
	kv, err := js.KeyValue(ctx, events.BucketGrants)
	if err != nil {
		t.Fatal(err)
	}
	// One reader connected to each node.
	readers := make([]*nats.Conn, len(c.Servers))
	for i, s := range c.Servers {
		readers[i] = s.Connect()
	}
	for i := 0; i < 30; i++ {
		key := fmt.Sprintf("k%d", i%3)
		val := fmt.Sprintf("v%d", i)
		rev, err := kv.Put(ctx, key, []byte(val))
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range readers {
			e, err := kvlast.Get(ctx, r, events.BucketGrants, key)
			if err != nil || string(e.Value) != val || e.Revision != rev {
				t.Fatalf("read via %s: %q rev %d, %v; want %q rev %d", r.ConnectedServerName(), e.Value, e.Revision, err, val, rev)
			}
		}
	}
	if err := kv.Delete(ctx, "k0"); err != nil {
		t.Fatal(err)
	}
	if _, err := kvlast.Get(ctx, readers[0], events.BucketGrants, "k0"); !bus.IsKeyMissing(err) {
		t.Fatalf("deleted key: %v", err)
	}
	if _, err := kvlast.Get(ctx, readers[0], events.BucketGrants, "never"); !bus.IsKeyMissing(err) {
		t.Fatalf("missing key: %v", err)
	}
}
