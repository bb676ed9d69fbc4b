package namespace_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/eventgrid/aznamespaces"

	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/internal/nsfake"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
)

func ce(id string) string {
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/subscriptions/s","type":"Microsoft.Resources.ResourceActionSuccess",
	"subject":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm","time":"2026-11-20T10:00:00Z",
	"data":{"operationName":"Microsoft.Compute/virtualMachines/start/action","evidence":[]}}`, id)
}

type store struct {
	mu    sync.Mutex
	ids   []string
	fail  error
	delay time.Duration
}

func (s *store) store(ctx context.Context, evs []eventgrid.Event) error {
	s.mu.Lock()
	fail, delay := s.fail, s.delay
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail != nil {
		return fail
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ev := range evs {
		s.ids = append(s.ids, ev.ID)
	}
	return nil
}

func (s *store) count() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.ids) }

func newPuller(t *testing.T, ns *nsfake.Namespace, st *store, mod func(*namespace.Config)) *namespace.Puller {
	t.Helper()
	cfg := namespace.Config{
		Endpoint: ns.Server.URL, Topic: ns.Topic, Subscription: ns.Sub, Key: nsfake.Key,
		ClientOptions: &aznamespaces.ReceiverClientOptions{},
		MaxEvents:     10, MaxWait: 10 * time.Second, Store: st.store,
	}
	cfg.ClientOptions.Transport = ns.Server.Client()
	cfg.ClientOptions.Retry = policy.RetryOptions{MaxRetries: -1}
	if mod != nil {
		mod(&cfg)
	}
	p, err := namespace.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReceiveStoreAcknowledge(t *testing.T) {
	ns := nsfake.New(t)
	ns.Publish(ce("a"), ce("b"), ce("c"))
	st := &store{}
	p := newPuller(t, ns, st, nil)
	n, err := p.Once(t.Context())
	if err != nil || n != 3 {
		t.Fatalf("received %d: %v", n, err)
	}
	if st.count() != 3 || ns.Count("acked") != 3 {
		t.Fatalf("stored %d, acked %d", st.count(), ns.Count("acked"))
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.ids[0] != "a" {
		t.Errorf("ids %v", st.ids)
	}
}

func TestRejectMalformed(t *testing.T) {
	ns := nsfake.New(t)
	ns.Publish(
		ce("good"),
		`{"specversion":"1.0","id":"no-source","type":"t"}`,                                                        // the SDK cannot decode it
		`{"specversion":"1.0","id":"bad-time","source":"s","type":"t","time":"yesterday"}`,                         // nor this
		`{"id":"eg","eventType":"t","subject":"s","eventTime":"2026-11-20T10:00:00Z","data":{},"dataVersion":"1"}`, // not a CloudEvent
	)
	st := &store{}
	p := newPuller(t, ns, st, nil)
	if _, err := p.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st.count() != 1 || ns.Count("acked") != 1 || ns.Count("rejected") != 3 {
		t.Fatalf("stored %d, acked %d, rejected %d", st.count(), ns.Count("acked"), ns.Count("rejected"))
	}
}

func TestReleaseWithDelayWhenStorageFails(t *testing.T) {
	ns := nsfake.New(t)
	ns.Publish(ce("x"), ce("y"))
	st := &store{fail: errors.New("jetstream unavailable")}
	p := newPuller(t, ns, st, nil)
	if _, err := p.Once(t.Context()); err == nil {
		t.Fatal("a storage failure was not reported")
	}
	if ns.Count("available") != 2 || ns.Count("acked") != 0 || len(ns.Releases) != 1 || ns.Releases[0] != "10" {
		t.Fatalf("available %d, acked %d, releases %v", ns.Count("available"), ns.Count("acked"), ns.Releases)
	}
	// Released with a delay: not redelivered at once.
	if n, _ := p.Once(t.Context()); n != 0 {
		t.Fatalf("%d events redelivered within the release delay", n)
	}
	ns.MakeVisible()
	st.mu.Lock()
	st.fail = nil
	st.mu.Unlock()
	if n, err := p.Once(t.Context()); err != nil || n != 2 {
		t.Fatalf("redelivery: %d, %v", n, err)
	}
	if ns.Count("acked") != 2 || st.count() != 2 {
		t.Fatalf("acked %d stored %d", ns.Count("acked"), st.count())
	}
}

func TestRenewLocksWhileSlow(t *testing.T) {
	ns := nsfake.New(t)
	ns.Publish(ce("slow"))
	st := &store{delay: 400 * time.Millisecond}
	p := newPuller(t, ns, st, func(c *namespace.Config) { c.RenewInterval = 100 * time.Millisecond })
	if _, err := p.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	if ns.Renewals < 2 || ns.Count("acked") != 1 {
		t.Fatalf("renewals %d, acked %d", ns.Renewals, ns.Count("acked"))
	}
}

func TestConfigErrors(t *testing.T) {
	for name, cfg := range map[string]namespace.Config{
		"no endpoint": {Topic: "t", Subscription: "s", Key: "k", Store: (&store{}).store},
		"no store":    {Endpoint: "https://x", Topic: "t", Subscription: "s", Key: "k"},
		"no auth":     {Endpoint: "https://x", Topic: "t", Subscription: "s", Store: (&store{}).store},
	} {
		if _, err := namespace.New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestNamespaceRejectsFutureDatedEvent: the pull bounds event times like
// the webhook: an event dated beyond the clock skew is rejected (to the
// dead-letter destination), never stored.
func TestNamespaceRejectsFutureDatedEvent(t *testing.T) {
	ns := nsfake.New(t)
	ns.Publish(ce("now"), `{"specversion":"1.0","id":"future","source":"/subscriptions/s","type":"Microsoft.Resources.ResourceDeleteSuccess",
	"subject":"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm","time":"2126-01-01T00:00:00Z",
	"data":{"operationName":"Microsoft.Compute/virtualMachines/delete"}}`)
	st := &store{}
	p := newPuller(t, ns, st, nil)
	if _, err := p.Once(t.Context()); err != nil {
		t.Fatal(err)
	}
	st.mu.Lock()
	ids := slices.Clone(st.ids)
	st.mu.Unlock()
	if !slices.Equal(ids, []string{"now"}) || ns.Count("acked") != 1 || ns.Count("rejected") != 1 {
		t.Fatalf("stored %v, acked %d, rejected %d: want only the event dated now stored", ids, ns.Count("acked"), ns.Count("rejected"))
	}
}
