package auditor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// harnessTimeout bounds a harness's own bus calls (h.ctx) and h.run.
const harnessTimeout = 3 * time.Minute

// checkpointTimeout is how long waitCheckpoint waits.
const checkpointTimeout = 30 * time.Second

// harness runs auditors against an embedded NATS server (every stream and
// bucket provisioned), on a log directory and checkpoint key pair of its
// own. Tests publish and inspect the bus through nc and js; every auditor
// gets its own connection, as in production.
type harness struct {
	t   testing.TB
	ctx context.Context // bounds the test's own bus calls; ends with the test
	srv *natstest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	dir string // the test's directory: the key pair, the log in dir/log
	// cfg is what start and run give Run, before their own options: the
	// server, a quiet logger, the log and key pair, checkpoints every
	// 100 ms, then newHarness's options. Tests may change it.
	cfg Config
}

// option adjusts an auditor's Config.
type option func(*Config)

// newHarness starts a NATS server and makes the key pair and log directory;
// start runs an auditor on them.
func newHarness(t testing.TB, opts ...option) *harness {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harnessTimeout)
	t.Cleanup(cancel)
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	h := &harness{t: t, ctx: ctx, srv: srv, nc: nc, js: js, dir: t.TempDir()}
	l := newTestLog(t, h.dir)
	h.cfg = Config{
		// Provision: the tests edit streams as an operator might, and
		// the auditor's restart puts the definitions back.
		Options:            service.Options{NATS: natsConfig(nc), Provision: true, Logger: quietLogger()},
		LogDir:             l.dir,
		SignerKeyFile:      l.signer,
		VerifierKeyFile:    l.verifier,
		CheckpointInterval: 100 * time.Millisecond,
	}
	for _, o := range opts {
		o(&h.cfg)
	}
	return h
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// natsConfig is how an auditor under test reaches the server nc is
// connected to: on a connection of its own, as in production.
func natsConfig(nc *nats.Conn) bus.Config {
	return bus.Config{URL: nc.ConnectedUrl(), ReconnectWait: 50 * time.Millisecond, MaxReconnectWait: 250 * time.Millisecond}
}

// config returns h.cfg with opts applied.
func (h *harness) config(opts ...option) Config {
	cfg := h.cfg
	for _, o := range opts {
		o(&cfg)
	}
	return cfg
}

// start runs an auditor with h.config(opts...) in the background until the
// test ends or the returned stop is called; stop returns Run's error.
func (h *harness) start(opts ...option) (stop func() error) {
	h.t.Helper()
	return h.startWith(hooks{}, opts...)
}

// startWith is start with test hooks.
func (h *harness) startWith(hk hooks, opts ...option) (stop func() error) {
	h.t.Helper()
	cfg := h.config(opts...)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := run(ctx, cfg, hk)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "auditor stopped early:", err)
		}
		done <- err
	}()
	stopped := false
	var err error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				h.t.Errorf("auditor did not stop")
			}
		}
		return err
	}
	h.t.Cleanup(func() { _ = stop() })
	return stop
}

// run runs an auditor with h.config(opts...) until it returns (h.ctx
// bounds it) and returns its error.
func (h *harness) run(opts ...option) error { return h.runWith(hooks{}, opts...) }

// runWith is run with test hooks.
func (h *harness) runWith(hk hooks, opts ...option) error {
	return run(h.ctx, h.config(opts...), hk)
}

// log is the log the auditor with h.cfg writes.
func (h *harness) log() testLog {
	return testLog{dir: h.cfg.LogDir, signer: h.cfg.SignerKeyFile, verifier: h.cfg.VerifierKeyFile}
}

// records reads and verifies the log; see testLog.records.
func (h *harness) records(trusted ...[]byte) ([]auditlog.Record, *auditlog.Report) {
	h.t.Helper()
	return h.log().records(h.t, trusted...)
}

// waitCheckpoint waits until the log's checkpoint covers at least n entries.
func (h *harness) waitCheckpoint(n uint64) {
	h.t.Helper()
	l := h.log()
	waitFor(h.t, checkpointTimeout, fmt.Sprintf("checkpoint covering %d entries", n), func() bool { return l.size() >= n })
}

// publish publishes n state events, numbered from start, with ids
// "ev-<number>" spread over vmKeys, and returns once JetStream stored them
// all.
func (h *harness) publish(start, n int) {
	h.t.Helper()
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := start; i < start+n; i++ {
		vm := vmKeys[i%len(vmKeys)]
		env, err := events.New(events.TypeState, "test", vm, events.State{VMKey: vm, From: events.StatusPending, To: events.StatusTrusted, ChangedAt: time.Now().UTC()})
		if err != nil {
			h.t.Fatal(err)
		}
		env.ID = "ev-" + strconv.Itoa(i)
		body, _ := env.Marshal()
		msg := &nats.Msg{Subject: events.StateSubject(vm), Data: body, Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, env.ID)
		f, err := h.js.PublishMsgAsync(msg)
		if err != nil {
			h.t.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) >= 512 {
			natstest.WaitAcks(h.ctx, h.t, futures)
			futures = futures[:0]
		}
	}
	natstest.WaitAcks(h.ctx, h.t, futures)
}

// publishOn publishes one policy event on each subject, in order, and
// returns once JetStream stored them all.
func (h *harness) publishOn(subjects ...string) {
	h.t.Helper()
	for _, subject := range subjects {
		env, err := events.New(events.TypePolicy, "test", subject, events.Policy{Name: "p", Version: 1})
		if err != nil {
			h.t.Fatal(err)
		}
		body, _ := env.Marshal()
		if _, err := h.js.Publish(h.ctx, subject, body); err != nil {
			h.t.Fatalf("publish on %s: %v", subject, err)
		}
	}
}

// editStream changes a stream's configuration as an operator (or an
// intruder) with stream edit rights would.
func (h *harness) editStream(name string, edit func(*jetstream.StreamConfig)) {
	h.t.Helper()
	s, err := h.js.Stream(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	edit(&cfg)
	if _, err := h.js.UpdateStream(h.ctx, cfg); err != nil {
		h.t.Fatalf("edit stream %s: %v", name, err)
	}
}

// streamState returns a stream's current state.
func (h *harness) streamState(name string) jetstream.StreamState {
	h.t.Helper()
	s, err := h.js.Stream(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	return s.CachedInfo().State
}

// consumerInfo returns the current state of the durable consumer name on
// the events stream.
func (h *harness) consumerInfo(name string) (*jetstream.ConsumerInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.js.Consumer(ctx, events.StreamEvents, name)
	if err != nil {
		return nil, err
	}
	return c.CachedInfo(), nil
}

// waitConsumer polls the durable consumer name (which may not exist yet)
// until cond holds of its state or timeout passes, and returns that state.
func (h *harness) waitConsumer(name, what string, timeout time.Duration, cond func(*jetstream.ConsumerInfo) bool) *jetstream.ConsumerInfo {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		info, err := h.consumerInfo(name)
		if err == nil && cond(info) {
			return info
		}
		if time.Now().After(deadline) {
			if err != nil {
				h.t.Fatalf("timed out after %v waiting for %s: consumer %s: %v", timeout, what, name, err)
			}
			h.t.Fatalf("timed out after %v waiting for %s: consumer %s: delivered %d, ack floor %d, %d pending, %d awaiting ack",
				timeout, what, name, info.Delivered.Stream, info.AckFloor.Stream, info.NumPending, info.NumAckPending)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitAcked waits until the auditor's consumer acknowledged every stream
// sequence up to n, and nothing beyond it.
func (h *harness) waitAcked(n uint64) {
	h.t.Helper()
	h.waitConsumer(DefaultConsumer, fmt.Sprintf("ack floor %d", n), 10*time.Second, func(i *jetstream.ConsumerInfo) bool {
		return i.AckFloor.Stream == n
	})
}

// waitIdle waits until the auditor's consumer has delivered every message
// of the stream and has none awaiting acknowledgement: whatever it was
// going to do with them is done.
func (h *harness) waitIdle() *jetstream.ConsumerInfo {
	h.t.Helper()
	return h.waitConsumer(DefaultConsumer, "the auditor's consumer idle", 30*time.Second, func(i *jetstream.ConsumerInfo) bool {
		return i.NumPending == 0 && i.NumAckPending == 0
	})
}

// testLog is a log directory and its checkpoint key pair.
type testLog struct {
	dir      string // the log
	signer   string // note signer key file
	verifier string // its public key file
}

// newTestLog writes a key pair into dir and names dir/log as the log.
func newTestLog(t testing.TB, dir string) testLog {
	t.Helper()
	l := testLog{dir: filepath.Join(dir, "log"), signer: filepath.Join(dir, "signer.key"), verifier: filepath.Join(dir, "signer.pub")}
	if err := auditlog.GenerateKeyFiles(l.signer, l.verifier, "test.vigil/audit"); err != nil {
		t.Fatal(err)
	}
	return l
}

// size returns the size of the log's published checkpoint (0 if there is
// none yet).
func (l testLog) size() uint64 {
	d, err := auditlog.OpenDir(l.dir)
	if err != nil {
		return 0
	}
	cp, err := d.ReadCheckpoint(context.Background())
	if err != nil {
		return 0
	}
	lines := strings.SplitN(string(cp), "\n", 3)
	if len(lines) < 3 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}

// verify verifies the log, consistent with the trusted checkpoints, and
// returns the report or the verification error.
func (l testLog) verify(t testing.TB, trusted ...[]byte) (*auditlog.Report, error) {
	t.Helper()
	v, err := auditlog.LoadVerifier(l.verifier)
	if err != nil {
		t.Fatal(err)
	}
	d, err := auditlog.OpenDir(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	return auditlog.Verify(context.Background(), d, v, auditlog.VerifyOptions{Trusted: trusted})
}

// records verifies the log (failing the test if it does not verify) and
// returns every record of it with the verification report.
func (l testLog) records(t testing.TB, trusted ...[]byte) ([]auditlog.Record, *auditlog.Report) {
	t.Helper()
	rep, err := l.verify(t, trusted...)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	v, err := auditlog.LoadVerifier(l.verifier)
	if err != nil {
		t.Fatal(err)
	}
	d, err := auditlog.OpenDir(l.dir)
	if err != nil {
		t.Fatal(err)
	}
	var recs []auditlog.Record
	if _, err := auditlog.Search(context.Background(), d, v, func(*auditlog.Record) bool { return true }, func(_ uint64, r *auditlog.Record) error {
		recs = append(recs, *r)
		return nil
	}); err != nil {
		t.Fatalf("search: %v", err)
	}
	return recs, rep
}
