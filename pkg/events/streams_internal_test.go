package events

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// TestProvisionedStreamsNeedNoUpdate checks that a stream as the server
// stores it compares equal to its definition, so a second Provision issues
// no update at all.
func TestProvisionedStreamsNeedNoUpdate(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := Provision(ctx, js, Topology{}); err != nil {
		t.Fatal(err)
	}
	for _, want := range Streams(Topology{}) {
		s, err := js.Stream(ctx, want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if diffs := streamConfigDiff(s.CachedInfo().Config, want); len(diffs) > 0 {
			t.Errorf("%s: stored config differs from its definition: %v", want.Name, diffs)
		}
	}
}
