package keyguard

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// openTest opens a keyguard (without running its loops) on a fresh server.
func openTest(t *testing.T, cfg Config) (*Keyguard, context.Context) {
	t.Helper()
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	cfg.Conn, cfg.Provision = conn, true
	cfg.MasterKey = make([]byte, 32)
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.defaults()
	svc, err := service.Start(ctx, "keyguard", cfg.Options)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		svc.Stop()
		_ = svc.Wait()
	})
	k, err := open(ctx, cfg, svc, cfg.MasterKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, ctx
}

// count returns how many messages the stream holds on subject.
func count(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, subject string) int {
	t.Helper()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return int(info.State.Subjects[subject])
}

// A message delivered again (same stream sequence) after its effect was
// stored changes nothing more and publishes nothing twice; a delivery that
// finds the grant changed but its events unpublished (the first attempt
// died in between) publishes them, once.
func TestRedeliveryIsIdempotent(t *testing.T) {
	k, ctx := openTest(t, Config{})
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/redelivered")
	if _, _, err := k.createGrant(ctx, vm, "", "GUID-1", "disk-key", BackendLocal, "test", ""); err != nil {
		t.Fatal(err)
	}
	key := grants.Key(vm, BackendLocal, "disk-key")
	keySubject, alertSubject := events.KeySubject(vm), events.AlertSubject(events.SeverityCritical, vm)
	revoke := cause{trigger: triggerRevoke, vm: vm, status: grants.CauseUntrusted, reason: "verdict contraindicated",
		id: "verdict-env-1", at: time.Now().UTC(), seq: 100, actor: "keyguard"}

	// First delivery dies after the grant was stored, before publishing.
	if _, err := k.actOn(ctx, key, revoke); err != nil {
		t.Fatal(err)
	}
	if n := count(t, ctx, k.conn.JS, events.StreamEvents, keySubject); n != 1 { // only "granted"
		t.Fatalf("%d key events before redelivery, want 1", n)
	}
	// Redelivered three times.
	for range 3 {
		if err := k.act(ctx, revoke); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, ctx, k.conn.JS, events.StreamEvents, keySubject); n != 2 {
		t.Fatalf("%d key events after redeliveries, want 2 (granted, revoked)", n)
	}
	if n := count(t, ctx, k.conn.JS, events.StreamAlerts, alertSubject); n != 1 {
		t.Fatalf("%d critical alerts, want 1", n)
	}
	g, err := k.grants.Get(ctx, key)
	if err != nil || g.State != grants.Revoked || g.CauseSeq != 100 || g.CauseID != "verdict-env-1" {
		t.Fatalf("grant %+v, %v", g, err)
	}

	// An operator restores; the old message delivered yet again must not
	// revoke anew, nor must an older one.
	if _, err := k.change(ctx, cause{vm: vm, id: "restore-1", at: time.Now(), actor: "alice", reason: "fixed"}, nil, func(g *grants.Grant) bool {
		g.State, g.RevokedFor, g.Action = grants.Active, "", events.KeyRestored
		return true
	}); err != nil {
		t.Fatal(err)
	}
	older := revoke
	older.seq, older.id = 99, "verdict-env-0"
	for _, c := range []cause{revoke, older} {
		if err := k.act(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	g, _ = k.grants.Get(ctx, key)
	if g.State != grants.Active {
		t.Fatalf("redelivered old event revoked a restored grant: %+v", g)
	}
	if n := count(t, ctx, k.conn.JS, events.StreamEvents, keySubject); n != 3 {
		t.Fatalf("%d key events, want 3 (granted, revoked, restored)", n)
	}
	// A new event (a later sequence) does revoke.
	newer := revoke
	newer.seq, newer.id = 101, "verdict-env-2"
	if err := k.act(ctx, newer); err != nil {
		t.Fatal(err)
	}
	if g, _ = k.grants.Get(ctx, key); g.State != grants.Revoked {
		t.Fatalf("new revocation not applied: %+v", g)
	}
}

// Older events never roll a grant back: a stop that is handled after the
// later "trusted" of the same VM (concurrent handlers, several replicas)
// does not suspend it.
func TestOlderEventDoesNotRollBack(t *testing.T) {
	k, ctx := openTest(t, Config{})
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/ordering")
	if _, _, err := k.createGrant(ctx, vm, "", "", "disk-key", BackendLocal, "test", ""); err != nil {
		t.Fatal(err)
	}
	key := grants.Key(vm, BackendLocal, "disk-key")
	trusted := cause{trigger: triggerResume, vm: vm, status: string(events.StatusTrusted), id: "b", seq: 20, actor: "keyguard"}
	stopped := cause{trigger: triggerSuspend, vm: vm, status: string(events.StatusSuspended), id: "a", seq: 19, actor: "keyguard"}
	for _, c := range []cause{trusted, stopped} {
		if err := k.act(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if g, _ := k.grants.Get(ctx, key); g.State != grants.Active || g.CauseSeq != 20 {
		t.Fatalf("grant %+v: the older stop was applied after the newer trusted", g.Grant)
	}
}

func TestClassify(t *testing.T) {
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/c")
	other := events.VMKey("/x")
	env := func(typ, subject string, data any) (events.Envelope, string) {
		e, err := events.New(typ, "test", subject, data)
		if err != nil {
			t.Fatal(err)
		}
		return e, subject
	}
	cases := []struct {
		name    string
		typ     string
		subject string
		data    any
		want    trigger
		status  string
		wantErr bool
	}{
		{"contraindicated", events.TypeVerdict, events.VerdictSubject(vm), events.Verdict{VMKey: vm, Status: events.VerdictContraindicated}, triggerRevoke, grants.CauseUntrusted, false},
		{"affirming", events.TypeVerdict, events.VerdictSubject(vm), events.Verdict{VMKey: vm, Status: events.VerdictAffirming}, triggerNone, "", false},
		{"none", events.TypeVerdict, events.VerdictSubject(vm), events.Verdict{VMKey: vm, Status: events.VerdictNone}, triggerNone, "", false},
		{"stale", events.TypeState, events.StateSubject(vm), events.State{VMKey: vm, To: events.StatusStale}, triggerRevoke, grants.CauseStale, false},
		{"retired", events.TypeState, events.StateSubject(vm), events.State{VMKey: vm, To: events.StatusRetired}, triggerRevoke, grants.CauseRetired, false},
		{"warning", events.TypeState, events.StateSubject(vm), events.State{VMKey: vm, To: events.StatusWarning}, triggerResume, "warning", false},
		{"unreachable", events.TypeState, events.StateSubject(vm), events.State{VMKey: vm, To: events.StatusUnreachable}, triggerNone, "", false},
		{"deallocated", events.TypeLifecycle, events.LifecycleSubject(vm), events.Lifecycle{VMKey: vm, Kind: events.LifecycleDeallocated}, triggerSuspend, "suspended", false},
		{"started", events.TypeLifecycle, events.LifecycleSubject(vm), events.Lifecycle{VMKey: vm, Kind: events.LifecycleStarted}, triggerNone, "", false},
		{"superseded delete", events.TypeLifecycle, events.LifecycleSubject(vm), events.Lifecycle{VMKey: vm, Kind: events.LifecycleDeleted, Superseded: true}, triggerNone, "", false},
		{"canceled delete", events.TypeLifecycle, events.LifecycleSubject(vm), events.Lifecycle{VMKey: vm, Kind: events.LifecycleDeleted, Outcome: "Canceled"}, triggerNone, "", false},
		{"vm from subject", events.TypeLifecycle, events.LifecycleSubject(vm), events.Lifecycle{Kind: events.LifecycleDeleted}, triggerRevoke, grants.CauseRetired, false},
		{"vm mismatch", events.TypeState, events.StateSubject(vm), events.State{VMKey: other, To: events.StatusStale}, 0, "", true},
		{"bad payload", events.TypeState, events.StateSubject(vm), "not an object", 0, "", true},
		{"other type", events.TypeConfig, events.ConfigSubject(vm), events.Config{VMKey: vm}, triggerNone, "", false},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e, subj := env(tc.typ, tc.subject, tc.data)
			c, err := classify(e, subj, uint64(i+1))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("classified %+v", c)
				}
				return
			}
			if err != nil || c.trigger != tc.want || (tc.status != "" && c.status != tc.status) {
				t.Fatalf("classify = %v %q, %v; want %v %q", c.trigger, c.status, err, tc.want, tc.status)
			}
			if c.trigger != triggerNone && (c.vm != vm || c.seq != uint64(i+1) || c.id != e.ID) {
				t.Fatalf("cause %+v", c)
			}
		})
	}
}
