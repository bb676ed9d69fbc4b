package busauth_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// env is a real nats-server in operator mode with a new Vigil identity,
// every stream and bucket provisioned by the first administrator.
type env struct {
	t     *testing.T
	set   *busauth.Set
	srv   *natstest.Server
	admin *client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, set: set, srv: natstest.StartOperator(t, set)}
	e.admin = e.as(busauth.Admin)
	natstest.Provision(t, e.admin.nc, events.Topology{})
	return e
}

// with returns e for the subtest t.
func (e *env) with(t *testing.T) *env {
	c := *e
	c.t = t
	return &c
}

// client is one connection as one user. Subscriptions the server refuses
// report it (nats.PermissionErrOnSubscribe).
type client struct {
	t     *testing.T
	creds busauth.Credentials
	nc    *nats.Conn
	js    jetstream.JetStream
}

func (e *env) connect(c busauth.Credentials, opts ...nats.Option) *client {
	e.t.Helper()
	cl := &client{t: e.t, creds: c}
	cl.nc = e.srv.ConnectCreds(c, append([]nats.Option{nats.PermissionErrOnSubscribe(true),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}, opts...)...)
	js, err := jetstream.New(cl.nc)
	if err != nil {
		e.t.Fatal(err)
	}
	cl.js = js
	return cl
}

// as connects as the user Init made for p.
func (e *env) as(p busauth.Principal, opts ...nats.Option) *client {
	e.t.Helper()
	c, err := e.set.Creds(p)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.connect(c, opts...)
}

// agent connects as the agent of vm.
func (e *env) agent(vm string, opts ...nats.Option) *client {
	e.t.Helper()
	c, err := e.set.AgentCreds(vm, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.connect(c, opts...)
}

// flush waits until the server has processed everything sent so far and
// the client has read everything the server sent before: a refusal
// (-ERR) comes before the PONG.
func (c *client) flush() {
	c.t.Helper()
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		c.t.Fatalf("%s: flush: %v", c.creds.Name, err)
	}
}

// publishMsg publishes m and returns the server's refusal of it, if any.
func (c *client) publishMsg(m *nats.Msg) error {
	c.t.Helper()
	refused, err := c.tryPublish(m)
	if err != nil {
		c.t.Fatalf("%s: publish on %s: %v", c.creds.Name, m.Subject, err)
	}
	return refused
}

// tryPublish publishes m and returns the server's refusal of it, if any,
// or the error that kept it from knowing.
func (c *client) tryPublish(m *nats.Msg) (refused, err error) {
	before := c.nc.LastError()
	if err := c.nc.PublishMsg(m); err != nil {
		return nil, err
	}
	if err := c.nc.FlushTimeout(10 * time.Second); err != nil {
		return nil, err
	}
	last := c.nc.LastError()
	if last != nil && last != before && errors.Is(last, nats.ErrPermissionViolation) &&
		(strings.Contains(last.Error(), strconv.Quote(m.Subject)) || m.Reply != "" && strings.Contains(last.Error(), strconv.Quote(m.Reply))) {
		return last, nil
	}
	return nil, nil
}

// publish publishes a probe on subject and returns the server's refusal.
func (c *client) publish(subject string) error {
	c.t.Helper()
	return c.publishMsg(&nats.Msg{Subject: subject, Data: []byte("probe")})
}

// subscribe subscribes to subject and returns the server's refusal.
func (c *client) subscribe(subject string) (*nats.Subscription, error) {
	c.t.Helper()
	sub, err := c.nc.SubscribeSync(subject)
	if err != nil {
		return nil, err
	}
	c.flush()
	// A refusal reached the subscription before the PONG.
	if _, err := sub.NextMsg(time.Millisecond); errors.Is(err, nats.ErrPermissionViolation) {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return sub, nil
}

// mustRefusePublish fails unless the server refuses c publishing on subject.
func (c *client) mustRefusePublish(subject string) {
	c.t.Helper()
	if err := c.publish(subject); err == nil {
		c.t.Errorf("%s may publish on %s", c.creds.Name, subject)
	}
}

// mustRefuseSubscribe fails unless the server refuses c subscribing to
// subject.
func (c *client) mustRefuseSubscribe(subject string) {
	c.t.Helper()
	if sub, err := c.subscribe(subject); err == nil {
		_ = sub.Unsubscribe()
		c.t.Errorf("%s may subscribe to %s", c.creds.Name, subject)
	}
}

// noErrors fails when the server refused anything c did.
func (c *client) noErrors() {
	c.t.Helper()
	c.flush()
	if err := c.nc.LastError(); err != nil {
		c.t.Errorf("%s: %v", c.creds.Name, err)
	}
}

// serve answers requests on subject (in queue when given) with answer's
// bytes, publishing the answer on the request's reply subject with the
// responder's own permissions, as bus.Serve does. Each publish's refusal
// (or nil) goes to the returned channel.
func (c *client) serve(subject, queue string, answer func(m *nats.Msg) []byte) <-chan error {
	c.t.Helper()
	out := make(chan error, 100)
	h := func(m *nats.Msg) {
		if m.Reply == "" {
			return
		}
		// The refusal is read on this connection, so that concurrent
		// publishes do not mix: one request at a time.
		refused, err := c.tryPublish(&nats.Msg{Subject: m.Reply, Data: answer(m)})
		if err != nil {
			refused = err
		}
		select {
		case out <- refused:
		default:
		}
	}
	var err error
	if queue != "" {
		_, err = c.nc.QueueSubscribe(subject, queue, h)
	} else {
		_, err = c.nc.Subscribe(subject, h)
	}
	if err != nil {
		c.t.Fatal(err)
	}
	c.flush()
	return out
}

// request asks subject and returns the answer.
func (c *client) request(subject string, data []byte) ([]byte, error) {
	c.t.Helper()
	m, err := c.nc.Request(subject, data, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return m.Data, nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// publishEvent publishes an event envelope through JetStream and waits for
// the stream's acknowledgement.
func (c *client) publishEvent(ctx context.Context, subject, typ string, data any) *jetstream.PubAck {
	c.t.Helper()
	env, err := events.New(typ, "test", subject, data)
	if err != nil {
		c.t.Fatal(err)
	}
	body, err := env.Marshal()
	if err != nil {
		c.t.Fatal(err)
	}
	ack, err := c.js.Publish(ctx, subject, body, jetstream.WithMsgID(env.ID))
	if err != nil {
		c.t.Fatalf("%s: publish %s: %v", c.creds.Name, subject, err)
	}
	return ack
}
