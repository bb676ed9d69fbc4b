package notifier_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/notifier"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// env is a nats-server with the streams and buckets, a connection and the
// notifier's key file.
type env struct {
	t       testing.TB
	srv     *natstest.Server
	conn    *bus.Conn
	store   *notifier.Store
	keyFile string
	client  *sink.Client
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := natstest.Start(t)
	srv.JetStream() // provisions
	e := newEnvAt(t, srv.URL())
	e.srv = srv
	return e
}

// newEnvAt is an env on the provisioned server or cluster at url.
func newEnvAt(t testing.TB, url string) *env {
	t.Helper()
	ctx := ctxT(t)
	conn, err := bus.Connect(ctx, bus.Config{URL: url, Name: "test"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	store, err := notifier.OpenStore(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, conn: conn, store: store, keyFile: filepath.Join(t.TempDir(), "notifier.key"),
		client: sink.NewClient(sink.ClientOptions{AllowPrivate: true, Timeout: 2 * time.Second})}
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// config is the tests' notifier configuration: fast retries and checks.
func (e *env) config() notifier.Config {
	return notifier.Config{
		Options:           service.Options{Conn: e.conn},
		KeyFile:           e.keyFile,
		GenerateKey:       true,
		AllowPrivateSinks: true,
		Client:            e.client,
		MinBackoff:        10 * time.Millisecond,
		MaxBackoff:        100 * time.Millisecond,
		AckWait:           2 * time.Second,
		HealthInterval:    20 * time.Millisecond,
	}
}

// start runs the notifier until the returned stop is called (or the
// test ends) and waits until it is ready.
func (e *env) start(cfg notifier.Config) (stop func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	cfg.Ready = func() { close(ready) }
	done := make(chan error, 1)
	go func() { done <- notifier.Run(ctx, cfg) }()
	select {
	case <-ready:
	case err := <-done:
		cancel()
		e.t.Fatalf("notifier: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		e.t.Fatal("notifier not ready")
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
				e.t.Errorf("notifier: %v", err)
			}
		})
	}
	e.t.Cleanup(stop)
	return stop
}

// subscribe subscribes a webhook at url.
func (e *env) subscribe(id, url string, change func(*notifier.Request)) notifier.Subscription {
	e.t.Helper()
	r := notifier.Request{ID: id, Protocol: sink.ProtocolWebhook, URL: url, Actor: "test",
		Secrets: sink.Secrets{WebhookSecrets: []string{testSecret}}}
	if change != nil {
		change(&r)
	}
	sub, err := e.store.Subscribe(ctxT(e.t), r, e.client)
	if err != nil {
		e.t.Fatalf("subscribe %s: %v", id, err)
	}
	return sub
}

const testSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

const vmA, vmB = "aldtmn2tg7p3rh5huznzu5dk3n", "bq3kq7p6xw5bnc2r4mhx2jtq5e"

// alert publishes an alert and returns it.
func (e *env) alert(a events.Alert) events.Alert {
	e.t.Helper()
	if a.At.IsZero() {
		a.At = time.Now().UTC()
	}
	if a.Severity == "" {
		a.Severity = events.SeverityCritical
	}
	if a.Message == "" {
		a.Message = a.Code
	}
	if err := e.conn.PublishAlert(ctxT(e.t), "test", "", a); err != nil {
		e.t.Fatal(err)
	}
	return a
}

// delivery is one request a receiver took.
type delivery struct {
	ID    string // webhook-id
	Event sink.CloudEvent
	At    time.Time
	Code  int // the status answered
}

// receiver is a webhook sink: answer decides each request's status
// (default 200) given the number of requests before it.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []delivery
	answer func(n int, w http.ResponseWriter, r *http.Request) int
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	rc := &receiver{answer: answer}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set(sink.HeaderAllowedOrigin, r.Header.Get(sink.HeaderRequestOrigin))
			return
		}
		body, _ := io.ReadAll(r.Body)
		var ev sink.CloudEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err := sink.Verify([]string{testSecret}, r.Header, body, time.Now(), 5*time.Minute); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		rc.mu.Lock()
		n := len(rc.got)
		rc.mu.Unlock()
		code := http.StatusOK
		if rc.answer != nil {
			code = rc.answer(n, w, r)
		}
		rc.mu.Lock()
		rc.got = append(rc.got, delivery{ID: r.Header.Get(sink.HeaderWebhookID), Event: ev, At: time.Now(), Code: code})
		rc.mu.Unlock()
		w.WriteHeader(code)
	}))
	t.Cleanup(rc.Server.Close)
	return rc
}

// deliveries are the requests taken so far.
func (rc *receiver) deliveries() []delivery {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

// accepted are the deliveries answered 2xx.
func (rc *receiver) accepted() []delivery {
	var out []delivery
	for _, d := range rc.deliveries() {
		if d.Code/100 == 2 {
			out = append(out, d)
		}
	}
	return out
}

// codes lists the accepted deliveries' alert codes and states.
func codes(ds []delivery) []string {
	var out []string
	for _, d := range ds {
		out = append(out, fmt.Sprintf("%s/%s", d.Event.Data.Alert.Code, d.Event.Data.State))
	}
	return out
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitAccepted waits until rc accepted n deliveries.
func waitAccepted(t *testing.T, rc *receiver, n int, timeout time.Duration) []delivery {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d accepted deliveries", n), func() (bool, string) {
		got := rc.accepted()
		return len(got) >= n, fmt.Sprintf("%d: %v", len(got), codes(got))
	})
	return rc.accepted()
}
