package bus_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// TestIsRevisionConflict: each compare-and-set refusal a real server
// gives is recognised, and nothing else.
func TestIsRevisionConflict(t *testing.T) {
	ctx, js := jetStream(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "conflict"})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "k", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	_, createErr := kv.Create(ctx, "k", []byte("2"))
	_, updateErr := kv.Update(ctx, "k", []byte("2"), rev+7)
	deleteErr := kv.Delete(ctx, "k", jetstream.LastRevision(rev+7))
	purgeErr := kv.Purge(ctx, "k", jetstream.LastRevision(rev+7))
	_, publishErr := js.Publish(ctx, "$KV.conflict.k", []byte("3"), jetstream.WithExpectLastSequencePerSubject(rev+7))
	_, notFound := kv.Get(ctx, "absent")
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"create of an existing key", createErr, true},
		{"update at another revision", updateErr, true},
		{"delete at another revision", deleteErr, true},
		{"purge at another revision", purgeErr, true},
		{"publish at another last sequence", publishErr, true},
		{"key not found", notFound, false},
		{"other error", errors.New("connection closed"), false},
		{"no error", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.want && c.err == nil {
				t.Fatal("the server did not refuse")
			}
			if got := bus.IsRevisionConflict(c.err); got != c.want {
				t.Errorf("IsRevisionConflict(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// TestIsKeyMissing: a key never written, deleted or purged is missing, as
// a real server says it; a refusal or any other error is not.
func TestIsKeyMissing(t *testing.T) {
	ctx, js := jetStream(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "missing", History: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"deleted", "purged", "present"} {
		if _, err := kv.Put(ctx, k, []byte("1")); err != nil {
			t.Fatal(err)
		}
	}
	if err := kv.Delete(ctx, "deleted"); err != nil {
		t.Fatal(err)
	}
	if err := kv.Purge(ctx, "purged"); err != nil {
		t.Fatal(err)
	}
	get := func(k string) error { _, err := kv.Get(ctx, k); return err }
	_, conflict := kv.Create(ctx, "present", []byte("2"))
	for _, c := range []struct {
		name string
		err  error
		want bool
	}{
		{"never written", get("absent"), true},
		{"deleted", get("deleted"), true},
		{"purged", get("purged"), true},
		{"present", get("present"), false},
		{"a compare-and-set refusal", conflict, false},
		{"other error", errors.New("connection closed"), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := bus.IsKeyMissing(c.err); got != c.want {
				t.Errorf("IsKeyMissing(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

// jetStream is JetStream on a server of the test's own, and a context
// that bounds the test.
func jetStream(t *testing.T) (context.Context, jetstream.JetStream) {
	t.Helper()
	srv := natstest.Start(t)
	nc, err := nats.Connect(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx, js
}
