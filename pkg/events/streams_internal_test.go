package events

import (
	"context"
	"errors"
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

// TestWhilePlacing: provisioning asks again while the cluster has too few
// servers online (as when it has just formed: the soak's provisioning met
// "no suitable peers for placement, peer offline" a moment after every
// node was healthy), and nothing else.
func TestWhilePlacing(t *testing.T) {
	noPeers := &jetstream.APIError{Code: 400, ErrorCode: codeNoPeers, Description: "no suitable peers for placement, peer offline"}
	other := &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeBadRequest, Description: "bad request"}
	for _, tc := range []struct {
		name    string
		answers []error // then nil
		timeout time.Duration
		calls   int
		want    error // nil: success
	}{
		{name: "placed at once", calls: 1, timeout: time.Minute},
		{name: "placed once peers are online", answers: []error{noPeers, noPeers, noPeers}, calls: 4, timeout: time.Minute},
		{name: "another refusal is final", answers: []error{other, noPeers}, calls: 1, timeout: time.Minute, want: other},
		{name: "gives up with the cluster's answer", answers: []error{noPeers, noPeers, noPeers, noPeers, noPeers, noPeers, noPeers, noPeers}, calls: 3, timeout: 600 * time.Millisecond, want: noPeers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), tc.timeout)
			defer cancel()
			calls := 0
			err := whilePlacing(ctx, func() error {
				calls++
				if calls <= len(tc.answers) {
					return tc.answers[calls-1]
				}
				return nil
			})
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("whilePlacing = %v, want %v", err, tc.want)
			}
			if tc.want != noPeers && calls != tc.calls || tc.want == noPeers && calls < tc.calls {
				t.Fatalf("%d calls, want %d", calls, tc.calls)
			}
		})
	}
}
