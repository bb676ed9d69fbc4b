package bus_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

func connect(t *testing.T, url string, opts ...func(*bus.Config)) *bus.Conn {
	t.Helper()
	cfg := bus.Config{URL: url, Name: t.Name()}
	for _, o := range opts {
		o(&cfg)
	}
	c, err := bus.Connect(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func withTracer(tp trace.TracerProvider) func(*bus.Config) {
	return func(c *bus.Config) { c.TracerProvider = tp }
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func lifecycle(vm string) events.Lifecycle {
	return events.Lifecycle{VMKey: vm, ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/" + vm, Kind: events.LifecycleStarted, Origin: "test", OccurredAt: time.Unix(1700000000, 0).UTC()}
}

func TestConnectFailsFastWithoutServer(t *testing.T) {
	start := time.Now()
	_, err := bus.Connect(context.Background(), bus.Config{URL: "nats://127.0.0.1:1"})
	if !errors.Is(err, bus.ErrConnect) {
		t.Fatalf("err = %v, want ErrConnect", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestTraceContinuesInConsumer(t *testing.T) {
	srv := natstest.Start(t)
	srv.JetStream()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	c := connect(t, srv.URL(), withTracer(tp))
	ctx := ctxT(t)

	ctx, root := tp.Tracer("test").Start(ctx, "ingest webhook")
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/a")
	if _, err := c.PublishEvent(ctx, events.LifecycleSubject(vm), events.TypeLifecycle, "test", lifecycle(vm)); err != nil {
		t.Fatal(err)
	}
	root.End()

	got := make(chan trace.SpanContext, 1)
	cctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	go func() {
		_ = c.Consume(cctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "trace-test"}, func(ctx context.Context, m *bus.Message) error {
			if tp := m.Msg.Headers().Get("traceparent"); tp == "" {
				t.Errorf("no lower-case traceparent header in %v", m.Msg.Headers())
			}
			got <- trace.SpanContextFromContext(ctx)
			return nil
		})
	}()
	select {
	case sc := <-got:
		if sc.TraceID() != root.SpanContext().TraceID() {
			t.Fatalf("consumer trace %s, want %s", sc.TraceID(), root.SpanContext().TraceID())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no message consumed")
	}
}

func TestPublishTwiceWithOneIDStoredOnce(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	c := connect(t, srv.URL())
	ctx := ctxT(t)
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/dup")
	e, err := events.New(events.TypeLifecycle, "test", "", lifecycle(vm))
	if err != nil {
		t.Fatal(err)
	}
	a1, err := c.Publish(ctx, events.LifecycleSubject(vm), e)
	if err != nil {
		t.Fatal(err)
	}
	a2, err := c.Publish(ctx, events.LifecycleSubject(vm), e)
	if err != nil {
		t.Fatal(err)
	}
	if a1.Duplicate || !a2.Duplicate || a1.Sequence != a2.Sequence {
		t.Fatalf("acks %+v %+v: want the second to be a duplicate of the first", a1, a2)
	}
	s, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("stream holds %d messages, want 1", n)
	}
}

func TestSecondPendingJobIsAbsorbed(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	c := connect(t, srv.URL())
	ctx := ctxT(t)
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/job")
	other := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/other")

	for i, tc := range []struct {
		vm       string
		absorbed bool
	}{{vm, false}, {vm, true}, {vm, true}, {other, false}} {
		absorbed, err := c.PublishJob(ctx, "test", events.Job{VMKey: tc.vm, Reason: "started"})
		if err != nil {
			t.Fatalf("job %d: %v", i, err)
		}
		if absorbed != tc.absorbed {
			t.Fatalf("job %d: absorbed = %v, want %v", i, absorbed, tc.absorbed)
		}
	}
	s, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if n := s.CachedInfo().State.Msgs; n != 2 {
		t.Fatalf("jobs stream holds %d messages, want 2 (one per VM)", n)
	}

	// Once the pending job is consumed and acked, a new job is accepted.
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamJobs, jetstream.ConsumerConfig{Durable: "w", FilterSubject: events.AttestJobSubject(vm), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(1)
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if absorbed, err := c.PublishJob(ctx, "test", events.Job{VMKey: vm, Reason: "schedule"}); err != nil || absorbed {
		t.Fatalf("job after ack: absorbed=%v err=%v, want a new pending job", absorbed, err)
	}
}

func TestHandlerErrorRedeliversWithBackoffAndPoisonTerminates(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()

	vmOK := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/flaky")
	vmBad := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/poison")
	for _, vm := range []string{vmOK, vmBad} {
		if _, err := c.PublishEvent(ctx, events.LifecycleSubject(vm), events.TypeLifecycle, "test", lifecycle(vm)); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	deliveries := map[string][]time.Time{}
	done := make(chan struct{})
	var closed atomic.Bool
	go func() {
		_ = c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "retry-test"}, func(ctx context.Context, m *bus.Message) error {
			vm := events.VMFromSubject(m.Msg.Subject())
			mu.Lock()
			deliveries[vm] = append(deliveries[vm], time.Now())
			n := len(deliveries[vm])
			mu.Unlock()
			switch {
			case vm == vmBad:
				return bus.Permanent(errors.New("cannot decode"))
			case n < 3:
				return errors.New("transient")
			}
			if closed.CompareAndSwap(false, true) {
				close(done)
			}
			return nil
		}, bus.WithBackoff(200*time.Millisecond, 400*time.Millisecond), bus.WithAlertSource("test"))
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("flaky message never succeeded")
	}
	mu.Lock()
	d := deliveries[vmOK]
	mu.Unlock()
	if len(d) != 3 {
		t.Fatalf("flaky message delivered %d times, want 3", len(d))
	}
	if g1, g2 := d[1].Sub(d[0]), d[2].Sub(d[1]); g1 < 180*time.Millisecond || g2 < 380*time.Millisecond {
		t.Fatalf("redelivery gaps %s, %s: want backoff of at least 200ms then 400ms", g1, g2)
	}

	// The poison message is terminated (delivered once) and an alert names it.
	alerts, err := js.OrderedConsumer(ctx, events.StreamAlerts, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	m, err := alerts.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no alert: %v", err)
	}
	env, err := events.Parse(m.Data())
	if err != nil {
		t.Fatal(err)
	}
	var a events.Alert
	if err := env.Decode(events.TypeAlert, &a); err != nil {
		t.Fatal(err)
	}
	if a.Code != "bus.poison_message" || a.VMKey != vmBad || m.Subject() != events.AlertSubject(events.SeverityHigh, vmBad) {
		t.Fatalf("alert %+v on %s", a, m.Subject())
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if n := len(deliveries[vmBad]); n != 1 {
		t.Fatalf("poison message delivered %d times, want 1", n)
	}
}

func TestLongHandlerIsKeptInProgress(t *testing.T) {
	srv := natstest.Start(t)
	srv.JetStream()
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/slow")
	if _, err := c.PublishEvent(ctx, events.LifecycleSubject(vm), events.TypeLifecycle, "test", lifecycle(vm)); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	finished := make(chan struct{})
	go func() {
		_ = c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "slow", AckWait: time.Second}, func(ctx context.Context, m *bus.Message) error {
			if calls.Add(1) == 1 {
				time.Sleep(3 * time.Second) // three times the ack wait
				close(finished)
			}
			return nil
		}, bus.WithInProgress(200*time.Millisecond))
	}()
	<-finished
	time.Sleep(1500 * time.Millisecond)
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler called %d times, want 1 (no redelivery while in progress)", n)
	}
}

// TestConsumeAfterIdle: the runner leaves the pull iterator's Next every
// 100 ms while messages come (a workaround for a pull the iterator can skip,
// see pullRecheck) and waits in it without limit after 1 s without one; a
// message published after an idle spell longer than that and than the pull
// heartbeat, and one right after it, are handled at once.
func TestConsumeAfterIdle(t *testing.T) {
	srv := natstest.Start(t)
	srv.JetStream()
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	handled := make(chan string, 4)
	go func() {
		_ = c.Consume(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: "idle"}, func(_ context.Context, m *bus.Message) error {
			handled <- m.Envelope.ID
			return nil
		})
	}()
	publish := func(name string) {
		t.Helper()
		vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/" + name)
		if _, err := c.PublishEvent(ctx, events.LifecycleSubject(vm), events.TypeLifecycle, "test", lifecycle(vm)); err != nil {
			t.Fatal(err)
		}
		select {
		case <-handled:
		case <-time.After(time.Second):
			t.Fatalf("%s not handled within 1 s", name)
		}
	}
	publish("first")
	time.Sleep(6 * time.Second)
	publish("after-idle")
	publish("next")
}

func TestRequestServe(t *testing.T) {
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	if _, err := c.Serve(ctx, "vigil.test.echo", "q", func(ctx context.Context, data []byte) ([]byte, error) {
		if string(data) == `"refuse"` {
			return nil, &bus.ReplyError{Code: "refused", Message: "not today"}
		}
		return data, nil
	}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		subject string
		req     string
		timeout time.Duration
		check   func(error) bool
	}{
		{"echo", "vigil.test.echo", "hello", time.Second, func(err error) bool { return err == nil }},
		{"refusal", "vigil.test.echo", "refuse", time.Second, func(err error) bool {
			var re *bus.ReplyError
			return errors.As(err, &re) && re.Code == "refused"
		}},
		{"no responders", "vigil.test.nobody", "x", time.Second, func(err error) bool { return errors.Is(err, bus.ErrNoResponders) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, tc.timeout)
			defer cancel()
			var out string
			err := c.Request(rctx, tc.subject, tc.req, &out)
			if !tc.check(err) {
				t.Fatalf("err = %v", err)
			}
			if err == nil && out != tc.req {
				t.Fatalf("reply %q, want %q", out, tc.req)
			}
		})
	}
	if err := c.Request(context.Background(), "vigil.test.echo", "x", nil); err == nil {
		t.Fatal("request without deadline accepted")
	}
}

// Threat: an agent's (or a service's) NATS credentials or TLS client key in
// a file other users on the host can read: they could act on the bus as
// that VM. Defence: Connect refuses such files before connecting, naming
// the file, its mode and the fix.
func TestCredentialFilesReadableByOthersRefused(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("not really a credential\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cert := file("client.crt", 0o644) // a certificate is public
	cases := []struct {
		name    string
		cfg     bus.Config
		refused string // the file refused, "" when the mode is fine
	}{
		{"creds 0644", bus.Config{CredsFile: file("world.creds", 0o644)}, filepath.Join(dir, "world.creds")},
		{"creds 0640", bus.Config{CredsFile: file("group.creds", 0o640)}, filepath.Join(dir, "group.creds")},
		{"creds 0600", bus.Config{CredsFile: file("own.creds", 0o600)}, ""},
		{"tls key 0644", bus.Config{TLSCertFile: cert, TLSKeyFile: file("world.key", 0o644)}, filepath.Join(dir, "world.key")},
		{"tls key 0600", bus.Config{TLSCertFile: cert, TLSKeyFile: file("own.key", 0o600)}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.URL = "nats://127.0.0.1:1" // nobody: a file that passes fails later
			_, err := bus.Connect(ctxT(t), cfg)
			if tc.refused == "" {
				if err == nil || errors.Is(err, keyfile.ErrPermissive) {
					t.Fatalf("connect: %v, want an error after the file check", err)
				}
				return
			}
			if !errors.Is(err, keyfile.ErrPermissive) || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("connect: %v, want a refusal of %s with the fix", err, tc.refused)
			}
		})
	}
}

// A handler sees the headers of the request it answers, and only those.
func TestServeHandlerSeesRequestHeader(t *testing.T) {
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	if bus.RequestHeader(ctx) != nil {
		t.Fatal("a header outside any handler")
	}
	if _, err := c.Serve(ctx, "vigil.test.header", "", func(ctx context.Context, _ []byte) ([]byte, error) {
		return []byte(bus.RequestHeader(ctx).Get("X-Test")), nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "two", ""} {
		m := nats.NewMsg("vigil.test.header")
		if want != "" {
			m.Header.Set("X-Test", want)
		}
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		reply, err := c.NC.RequestMsgWithContext(rctx, m)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
		if string(reply.Data) != want {
			t.Fatalf("handler saw X-Test %q, want %q", reply.Data, want)
		}
	}
}

// TestClusterLeaderLossLosesNoAckedMessage: on a 3-node cluster, open or
// in operator mode (the publisher as ingest, the stream read back as the
// administrator), losing the stream leader loses no acknowledged message
// and publishing resumes.
func TestClusterLeaderLossLosesNoAckedMessage(t *testing.T) {
	for _, auth := range []bool{false, true} {
		name := "open"
		if auth {
			name = "operator mode"
		}
		t.Run(name, func(t *testing.T) { testClusterLeaderLoss(t, auth) })
	}
}

func testClusterLeaderLoss(t *testing.T, auth bool) {
	var (
		cl  *natstest.Cluster
		js  jetstream.JetStream
		c   *bus.Conn
		set *busauth.Set
	)
	if auth {
		var err error
		if set, err = busauth.Init(busauth.Options{}); err != nil {
			t.Fatal(err)
		}
		cl = natstest.StartOperatorCluster(t, set, 3)
		as := func(p busauth.Principal) func(*bus.Config) {
			return func(cfg *bus.Config) {
				cr, err := set.Creds(p)
				if err != nil {
					t.Fatal(err)
				}
				cfg.UserJWT, cfg.NKeySeed, cfg.InboxPrefix = cr.JWT, cr.Seed, cr.InboxPrefix
			}
		}
		js = natstest.Provision(t, connect(t, cl.URLs(), as(busauth.Admin)).NC, events.Topology{Replicas: 3})
		c = connect(t, cl.URLs(), as(busauth.Ingest))
	} else {
		cl = natstest.StartCluster(t, 3)
		js = natstest.Provision(t, cl.Connect(), events.Topology{Replicas: 3})
		c = connect(t, cl.URLs())
	}
	ctx := ctxT(t)

	acked := map[uint64]bool{}
	publish := func(ctx context.Context, i int) error {
		vm := events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i))
		e, err := events.New(events.TypeLifecycle, "test", "", lifecycle(vm))
		if err != nil {
			return err
		}
		ack, err := c.Publish(ctx, events.LifecycleSubject(vm), e)
		if err != nil {
			return err
		}
		acked[ack.Sequence] = true
		return nil
	}
	for i := range 50 {
		if err := publish(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	leader := cl.StreamLeader(events.StreamEvents, 10*time.Second)
	leader.Stop()

	// Publishing resumes once a new leader is elected.
	resumed := false
	for i := 50; i < 100; i++ {
		deadline := time.Now().Add(15 * time.Second)
		for {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := publish(pctx, i)
			cancel()
			if err == nil {
				resumed = true
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("publish %d after leader loss: %v", i, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	if !resumed {
		t.Fatal("publishing did not resume")
	}
	newLeader := cl.StreamLeader(events.StreamEvents, 10*time.Second)
	if newLeader == leader {
		t.Fatal("stopped server still leads")
	}
	s, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	for seq := range acked {
		if _, err := s.GetMsg(ctx, seq); err != nil {
			t.Fatalf("acknowledged message %d lost: %v", seq, err)
		}
	}
	if len(acked) != 100 {
		t.Fatalf("%d acked messages, want 100", len(acked))
	}
}
