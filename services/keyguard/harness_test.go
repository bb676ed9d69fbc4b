package keyguard_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// The simulated hardware vendors are deterministic; build them once.
var (
	authOnce sync.Once
	auth     *sim.Authority
)

func authority(t testing.TB) *sim.Authority {
	authOnce.Do(func() {
		a, err := sim.NewAuthority(sim.AuthorityConfig{})
		if err != nil {
			panic(err)
		}
		auth = a
	})
	return auth
}

const testSecret = "0123456789abcdef0123456789abcdef"

// harness runs keyguard against an embedded NATS server.
type harness struct {
	t   testing.TB
	srv *natstest.Server
	// url, when set, is the server's URL instead of srv's (a server in
	// another process: BenchmarkEnroll).
	url   string
	conn  *bus.Conn
	js    jetstream.JetStream
	cfg   keyguard.Config
	hooks keyguard.Hooks
	stop  func()
	// auth is the identity of an operator-mode srv (newOperatorHarness):
	// the test then connects as the administrator, keyguard as itself.
	auth *busauth.Set
}

type option func(*keyguard.Config)

func newHarness(t testing.TB, opts ...option) *harness {
	t.Helper()
	return newHarnessOn(t, natstest.Start(t), opts...)
}

// newHarnessOn runs keyguard against srv, whose default user (when it has
// accounts) may do what keyguard does.
func newHarnessOn(t testing.TB, srv *natstest.Server, opts ...option) *harness {
	t.Helper()
	h := prepareHarness(t, srv, opts...)
	h.start()
	return h
}

// prepareHarness is newHarnessOn without starting keyguard: set h.hooks,
// then h.start().
func prepareHarness(t testing.TB, srv *natstest.Server, opts ...option) *harness {
	t.Helper()
	return prepareHarnessWith(&harness{t: t, srv: srv}, opts...)
}

// prepareHarnessWith prepares h, whose t, srv and auth are set.
func prepareHarnessWith(h *harness, opts ...option) *harness {
	t := h.t
	h.conn = h.connect()
	h.js = h.conn.JS
	if err := events.Provision(ctxT(t), h.js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	a := authority(t)
	h.cfg = keyguard.Config{
		MasterKey:     []byte("0123456789abcdef0123456789abcdef"),
		ImportSecrets: map[string][]byte{"disk-key": []byte(testSecret), "other-key": []byte("other")},
		Evidence: keyguard.EvidenceConfig{
			Verifier: evidence.Config{TestRoots: a.TrustRoots(), Offline: true},
			Policy:   a.Policy(),
		},
		ReconcileInterval: time.Hour,
	}
	h.cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, o := range opts {
		o(&h.cfg)
	}
	return h
}

// newOperatorHarness runs keyguard as its principal on an operator-mode
// server of a fresh identity; h.conn is the first administrator's.
func newOperatorHarness(t testing.TB, opts ...option) *harness {
	t.Helper()
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, srv: natstest.StartOperator(t, set), auth: set}
	prepareHarnessWith(h, opts...)
	h.start()
	return h
}

// with returns h reporting to t (a subtest).
func (h *harness) with(t testing.TB) *harness {
	c := *h
	c.t = t
	return &c
}

// serverURL is h's server's client URL.
func (h *harness) serverURL() string {
	if h.url != "" {
		return h.url
	}
	return h.srv.URL()
}

// connect connects to h's server, in operator mode as the administrator.
func (h *harness) connect() *bus.Conn {
	h.t.Helper()
	if h.auth != nil {
		return h.connectCreds(h.creds(busauth.Admin))
	}
	return h.connectCreds(busauth.Credentials{Name: "test"})
}

// creds returns the credentials of p in h's operator-mode identity.
func (h *harness) creds(p busauth.Principal) busauth.Credentials {
	h.t.Helper()
	c, err := h.auth.Creds(p)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

// connectCreds connects to h's server with c (as c.Name; without a JWT
// when c has none).
func (h *harness) connectCreds(c busauth.Credentials) *bus.Conn {
	h.t.Helper()
	conn, err := bus.Connect(context.Background(), bus.Config{URL: h.serverURL(), Name: c.Name, UserJWT: c.JWT, NKeySeed: c.Seed,
		InboxPrefix: c.InboxPrefix, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// start runs a keyguard replica with h.cfg on its own connection.
func (h *harness) start() {
	h.t.Helper()
	cfg := h.cfg
	if h.auth != nil {
		cfg.Conn = h.connectCreds(h.creds(busauth.Keyguard))
	} else {
		cfg.Conn = h.connect()
	}
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- keyguard.RunWithHooks(ctx, cfg, h.hooks) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		h.t.Fatalf("keyguard stopped: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		h.t.Fatal("keyguard not ready after 30s")
	}
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("keyguard: %v", err)
			}
		case <-time.After(20 * time.Second):
			h.t.Error("keyguard did not stop")
		}
	}
	prev := h.stop
	h.stop = func() {
		stop()
		if prev != nil {
			prev()
		}
	}
	h.t.Cleanup(stop)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// newVM creates a simulated CVM (fast ECDSA attestation key).
func (h *harness) newVM(name string) *sim.VM {
	h.t.Helper()
	vm, err := authority(h.t).NewVM(sim.VMConfig{
		ResourceID: "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/" + name,
		AK:         sim.AKECDSAP256,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return vm
}

// setStatus writes the VM's attestation status as attest-worker would,
// and its inventory record (with its vmId) as ingest would.
func (h *harness) setStatus(vm *sim.VM, s events.Status) {
	h.t.Helper()
	h.setInventory(vm, vm.VMID())
	ctx := ctxT(h.t)
	kv, err := h.js.KeyValue(ctx, events.BucketStatus)
	if err != nil {
		h.t.Fatal(err)
	}
	rec := events.VMStatus{VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vm.VMID(), Status: s, Since: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
	b, _ := json.Marshal(rec)
	if _, err := kv.Put(ctx, vm.VMKey(), b); err != nil {
		h.t.Fatal(err)
	}
}

// grant creates a local grant through the operator API.
func (h *harness) grant(vm *sim.VM, key, backend string) keyguard.ChangeResponse {
	h.t.Helper()
	resp, err := keyguard.Grant(ctxT(h.t), h.conn, keyguard.GrantRequest{VM: vm.ResourceID(), Key: key, Backend: backend, Actor: "test"})
	if err != nil {
		h.t.Fatalf("grant %s: %v", key, err)
	}
	return resp
}

func (h *harness) getGrant(vm *sim.VM, backend, key string) grants.Entry {
	h.t.Helper()
	ctx := ctxT(h.t)
	s, err := grants.Open(ctx, h.conn.NC, h.js)
	if err != nil {
		h.t.Fatal(err)
	}
	e, err := s.Get(ctx, grants.Key(vm.VMKey(), backend, key))
	if err != nil {
		h.t.Fatal(err)
	}
	return e
}

// waitGrant waits until the grant reaches state (and is applied).
func (h *harness) waitGrant(vm *sim.VM, backend, key string, state grants.State) grants.Entry {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		e := h.getGrant(vm, backend, key)
		if e.State == state && e.Applied {
			return e
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("grant %s/%s: state %s applied %t (%s), want %s", backend, key, e.State, e.Applied, e.ApplyError, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) publish(subject, typ string, data any) events.Envelope {
	h.t.Helper()
	env, err := h.conn.PublishEvent(ctxT(h.t), subject, typ, "test", data)
	if err != nil {
		h.t.Fatal(err)
	}
	return env
}

func (h *harness) verdict(vm *sim.VM, status string, reasons ...events.Reason) events.Envelope {
	return h.publish(events.VerdictSubject(vm.VMKey()), events.TypeVerdict, events.Verdict{
		ID: events.NewID(), VMKey: vm.VMKey(), VMID: vm.VMID(), Platform: vm.Platform(), Status: status, Reasons: reasons, IssuedAt: time.Now().UTC(),
	})
}

func (h *harness) state(vm *sim.VM, from, to events.Status) events.Envelope {
	return h.publish(events.StateSubject(vm.VMKey()), events.TypeState, events.State{
		VMKey: vm.VMKey(), VMID: vm.VMID(), From: from, To: to, ChangedAt: time.Now().UTC(),
	})
}

func (h *harness) lifecycle(vm *sim.VM, kind events.LifecycleKind) events.Envelope {
	return h.publish(events.LifecycleSubject(vm.VMKey()), events.TypeLifecycle, events.Lifecycle{
		VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vm.VMID(), Kind: kind, Origin: "test", OccurredAt: time.Now().UTC(),
	})
}

// attester makes the simulated VM answer like the agent does for a release.
func attester(vm *sim.VM) keyrelease.Attester {
	return keyrelease.AttesterFunc(func(_ context.Context, nonce, extra []byte) ([]byte, error) {
		b, err := vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: extra})
		if err != nil {
			return nil, err
		}
		return b.Marshal()
	})
}

// release runs the agent's side of a release for vm, with a as the source
// of evidence.
func (h *harness) release(vm *sim.VM, a keyrelease.Attester, key string) (*keyrelease.Released, error) {
	c := &keyrelease.Client{Requester: h.conn, VMKey: vm.VMKey(), Attester: a, Timeout: 20 * time.Second}
	return c.Release(ctxT(h.t), key)
}

// keyEvents returns the key events of vm stored so far.
func (h *harness) keyEvents(vm *sim.VM) []events.Key {
	h.t.Helper()
	var out []events.Key
	for _, env := range h.stored(events.KeySubject(vm.VMKey())) {
		var k events.Key
		if err := env.Decode(events.TypeKey, &k); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

// alerts returns the alerts about vm stored so far.
func (h *harness) alerts(vm *sim.VM) []events.Alert {
	h.t.Helper()
	var out []events.Alert
	for _, env := range h.stored("vigil.alert.*." + vm.VMKey()) {
		var a events.Alert
		if err := env.Decode(events.TypeAlert, &a); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// waitAlerts waits until vm's alerts satisfy ok (keyguard publishes an
// alert after the grant write and the key event a test waits for) and
// returns them; it fails the test after 10 s with what it saw.
func (h *harness) waitAlerts(vm *sim.VM, what string, ok func([]events.Alert) bool) []events.Alert {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		alerts := h.alerts(vm)
		if ok(alerts) {
			return alerts
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no %s among the alerts of %s: %+v", what, vm.VMKey(), alerts)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stored reads every message on subject from its stream.
func (h *harness) stored(subject string) []events.Envelope {
	h.t.Helper()
	ctx := ctxT(h.t)
	stream := events.StreamEvents
	if len(subject) > 12 && subject[:12] == "vigil.alert." {
		stream = events.StreamAlerts
	}
	c, err := h.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	n := int(info.NumPending)
	var out []events.Envelope
	for len(out) < n {
		batch, err := c.Fetch(n-len(out), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			env, err := events.Parse(m.Data())
			if err != nil {
				h.t.Fatal(err)
			}
			out = append(out, env)
			got++
		}
		if got == 0 {
			h.t.Fatalf("stream %s: read %d of %d messages on %s", stream, len(out), n, subject)
		}
	}
	return out
}

// waitKeyEvent waits for a key event of vm matching action and backend.
func (h *harness) waitKeyEvent(vm *sim.VM, action events.KeyAction, backend string) events.Key {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		for _, k := range h.keyEvents(vm) {
			if k.Action == action && (backend == "" || k.Backend == backend) {
				return k
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("no %s key event (backend %q) for %s: %+v", action, backend, vm.VMKey(), h.keyEvents(vm))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func refusal(err error) string {
	var re *bus.ReplyError
	if errors.As(err, &re) {
		return re.Code
	}
	return fmt.Sprintf("not a refusal: %v", err)
}
