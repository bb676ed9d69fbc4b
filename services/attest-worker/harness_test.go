package attestworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
)

// The attest-worker may not import the agent service, so the tests answer
// challenges with their own small responders around pkg/evidence/sim.

var testAuthority = sync.OnceValue(func() *sim.Authority {
	a, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		panic(err)
	}
	return a
})

// testVM is a simulated VM with an agent that records every challenge.
type testVM struct {
	*sim.VM
	mu      sync.Mutex
	silent  bool
	delay   time.Duration
	garbage bool
	times   []time.Time // when each challenge arrived
	unsub   func() error
}

func (v *testVM) challenges() []time.Time {
	v.mu.Lock()
	defer v.mu.Unlock()
	return append([]time.Time(nil), v.times...)
}

// fleet is the simulated VMs of a test, served on one connection, or each
// on its own (agentConn, under bus identity).
type fleet struct {
	t         testing.TB
	conn      *bus.Conn
	agentConn func(vm string) *bus.Conn
	ctx       context.Context
	vms       []*testVM
	by        map[string]*testVM
}

func newFleet(t testing.TB, ctx context.Context, conn *bus.Conn, n int, cfg sim.VMConfig) *fleet {
	t.Helper()
	return newFleetOn(t, ctx, conn, nil, n, cfg)
}

// newFleetOn is newFleet with each VM's agent on agentConn(vm) (conn when
// nil); conn registers the VMs.
func newFleetOn(t testing.TB, ctx context.Context, conn *bus.Conn, agentConn func(string) *bus.Conn, n int, cfg sim.VMConfig) *fleet {
	t.Helper()
	if cfg.AK == sim.AKRSA2048 {
		cfg.AK = sim.AKECDSAP256
	}
	vms, err := testAuthority().NewFleet(n, cfg)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, conn: conn, agentConn: agentConn, ctx: ctx, by: map[string]*testVM{}}
	for _, v := range vms {
		tv := &testVM{VM: v}
		f.vms = append(f.vms, tv)
		f.by[v.VMKey()] = tv
		f.subscribe(tv)
	}
	return f
}

func (f *fleet) subscribe(v *testVM) {
	conn := f.conn
	if f.agentConn != nil {
		conn = f.agentConn(v.VMKey())
	}
	sub, err := conn.Serve(f.ctx, events.ChallengeSubject(v.VMKey()), "", func(ctx context.Context, data []byte) ([]byte, error) {
		var ch events.Challenge
		if err := json.Unmarshal(data, &ch); err != nil {
			return nil, err
		}
		v.mu.Lock()
		v.times = append(v.times, time.Now())
		delay, garbage := v.delay, v.garbage
		v.mu.Unlock()
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if garbage {
			return []byte(`{"format":"vigil.evidence/v1","platform":"azure-sev-snp"}`), nil
		}
		return v.Respond(ch.Nonce)
	}, bus.WithServeConcurrency(256))
	if err != nil {
		f.t.Fatal(err)
	}
	v.unsub = sub.Unsubscribe
}

// setSilent unsubscribes the VM's agent (challenges find no responder) or
// subscribes it again.
func (f *fleet) setSilent(v *testVM, silent bool) {
	v.mu.Lock()
	was := v.silent
	v.silent = silent
	v.mu.Unlock()
	switch {
	case silent && !was:
		_ = v.unsub()
	case !silent && was:
		f.subscribe(v)
	}
}

// register stores the VMs in the inventory as ingest would and enqueues a
// job for each (reason "created").
func (f *fleet) register(ctx context.Context, vms ...*testVM) {
	f.t.Helper()
	kv, err := f.conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, v := range vms {
		rec := events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), PowerState: "running", Lifecycle: events.LifecycleCreated, EventTime: time.Now().UTC(), UpdatedAt: time.Now().UTC()}
		b, _ := json.Marshal(rec)
		if _, err := kv.Put(ctx, v.VMKey(), b); err != nil {
			f.t.Fatal(err)
		}
		if _, err := f.conn.PublishJob(ctx, "test", events.Job{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), Reason: "created"}); err != nil {
			f.t.Fatal(err)
		}
	}
}

func connectBus(t testing.TB, url string) *bus.Conn {
	t.Helper()
	return connectBusAs(t, url, busauth.Credentials{})
}

// connectBusAs connects to url with c's credentials and inbox prefix (none
// when c is zero), waiting for a server and reconnecting fast.
func connectBusAs(t testing.TB, url string, c busauth.Credentials) *bus.Conn {
	t.Helper()
	conn, err := bus.Connect(context.Background(), bus.Config{URL: url, Name: t.Name(), UserJWT: c.JWT, NKeySeed: c.Seed, InboxPrefix: c.InboxPrefix,
		WaitForServer: true, Logger: testLogger(), ReconnectWait: 50 * time.Millisecond, MaxReconnectWait: 250 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func testLogger() *slog.Logger {
	if os.Getenv("VIGIL_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// testConfig is a worker configuration with a short schedule.
func testConfig(conn *bus.Conn, name string) Config {
	auth := testAuthority()
	return Config{
		Options:          service.Options{Conn: conn, Logger: testLogger()},
		Name:             name,
		Concurrency:      64,
		Timing:           Timing{Interval: 2 * time.Second, Jitter: 0.1, Grace: 3 * time.Second, RetryBase: 200 * time.Millisecond, RetryMax: time.Second},
		ChallengeTimeout: time.Second,
		AckWait:          4 * time.Second,
		SweepEvery:       time.Second,
		Policy:           auth.Policy(),
		Verifier:         evidence.Config{TestRoots: auth.TrustRoots(), Offline: true},
	}
}

// runWorker runs a worker until the test ends or stop is called.
func runWorker(t testing.TB, cfg Config) (stop func() error) { return runWorkerWith(t, cfg, hooks{}) }

// runWorkerWith runs a worker with test hooks until the test ends or stop
// is called.
func runWorkerWith(t testing.TB, cfg Config, h hooks) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	cfg.Ready = sync.OnceFunc(func() { close(ready) })
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, h) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("worker %s stopped at start: %v", cfg.Name, err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("worker %s did not start", cfg.Name)
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("worker did not stop")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// statusOf reads a VM's status record.
func statusOf(t testing.TB, ctx context.Context, js jetstream.JetStream, vm string) (events.VMStatus, bool) {
	t.Helper()
	kv, err := js.KeyValue(ctx, events.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	st, _, ok, err := statusStore{kv: kv}.get(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	return st, ok
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitStatus waits until every VM has status want.
func waitStatus(t testing.TB, ctx context.Context, js jetstream.JetStream, timeout time.Duration, want events.Status, vms ...*testVM) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d VMs %s", len(vms), want), func() (bool, string) {
		for _, v := range vms {
			st, _ := statusOf(t, ctx, js, v.VMKey())
			if st.Status != want {
				return false, fmt.Sprintf("%s is %q %v", v.VMKey(), st.Status, st.Reasons)
			}
		}
		return true, ""
	})
}

// streamEvents returns every message on subject filter in stream.
func streamEvents(t testing.TB, ctx context.Context, js jetstream.JetStream, stream, filter string) []jetstream.Msg {
	t.Helper()
	c, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := int(info.NumPending)
	var out []jetstream.Msg
	for len(out) < n {
		batch, err := c.Fetch(min(n-len(out), 500), jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			out = append(out, m)
			got++
		}
		if got == 0 {
			t.Fatalf("read %d of %d messages on %s", len(out), n, filter)
		}
	}
	return out
}

func decode[T any](t testing.TB, m jetstream.Msg, typ string) (events.Envelope, T) {
	t.Helper()
	env, err := events.Parse(m.Data())
	if err != nil {
		t.Fatal(err)
	}
	var v T
	if err := env.Decode(typ, &v); err != nil {
		t.Fatal(err)
	}
	return env, v
}

// verdictsOf returns the stored verdicts of vm.
func verdictsOf(t testing.TB, ctx context.Context, js jetstream.JetStream, vm string) []events.Verdict {
	t.Helper()
	var out []events.Verdict
	for _, m := range streamEvents(t, ctx, js, events.StreamEvents, events.VerdictSubject(vm)) {
		_, v := decode[events.Verdict](t, m, events.TypeVerdict)
		out = append(out, v)
	}
	return out
}

// alertsWith returns the alerts with code.
func alertsWith(t testing.TB, ctx context.Context, js jetstream.JetStream, code string) []events.Alert {
	t.Helper()
	var out []events.Alert
	for _, m := range streamEvents(t, ctx, js, events.StreamAlerts, events.SubjectAlertsAll) {
		_, a := decode[events.Alert](t, m, events.TypeAlert)
		if a.Code == code {
			out = append(out, a)
		}
	}
	return out
}

// statesOf returns the state changes of vm.
func statesOf(t testing.TB, ctx context.Context, js jetstream.JetStream, vm string) []events.State {
	t.Helper()
	var out []events.State
	for _, m := range streamEvents(t, ctx, js, events.StreamEvents, events.StateSubject(vm)) {
		_, s := decode[events.State](t, m, events.TypeState)
		out = append(out, s)
	}
	return out
}

// env starts a server and returns it with a connection and a context.
func testEnv(t testing.TB) (*natstest.Server, *bus.Conn, context.Context) {
	t.Helper()
	srv := natstest.Start(t)
	srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return srv, connectBus(t, srv.URL()), ctx
}
