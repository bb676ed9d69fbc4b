package bus_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// TestWaitJetStream: a server with JetStream answers at once; one without
// keeps WaitJetStream asking until its context ends, with JetStream's
// error.
func TestWaitJetStream(t *testing.T) {
	tests := []struct {
		name   string
		server func(t testing.TB) string // its URL
		ok     bool
	}{
		{"jetstream", func(t testing.TB) string { return natstest.Start(t).URL() }, true},
		{"no jetstream", func(t testing.TB) string {
			srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true})
			if err != nil {
				t.Fatal(err)
			}
			srv.Start()
			t.Cleanup(srv.Shutdown)
			if !srv.ReadyForConnections(10 * time.Second) {
				t.Fatal("server not ready")
			}
			return srv.ClientURL()
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(tc.server(t))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
			defer cancel()
			err = bus.WaitJetStream(ctx, js, 200*time.Millisecond)
			if (err == nil) != tc.ok {
				t.Fatalf("WaitJetStream: %v, want ok %v", err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "jetstream") {
				t.Errorf("the error does not say what does not answer: %v", err)
			}
		})
	}
}
