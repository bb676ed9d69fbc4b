package auditor

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// natsConfig is how an auditor under test reaches the server nc is
// connected to: on a connection of its own, as in production.
func natsConfig(nc *nats.Conn) bus.Config {
	return bus.Config{URL: nc.ConnectedUrl(), ReconnectWait: 50 * time.Millisecond, MaxReconnectWait: 250 * time.Millisecond}
}

// testKeys writes a key pair into dir and returns the signer and verifier
// key paths.
func testKeys(t testing.TB, dir string) (string, string) {
	t.Helper()
	skey, vkey := filepath.Join(dir, "signer.key"), filepath.Join(dir, "signer.pub")
	if err := auditlog.GenerateKeyFiles(skey, vkey, "test.vigil/audit"); err != nil {
		t.Fatal(err)
	}
	return skey, vkey
}

// vmKeys are the VM keys events are spread over.
var vmKeys = func() []string {
	var ks []string
	for i := range 8 {
		ks = append(ks, events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i)))
	}
	return ks
}()

// publishEvents publishes n verdict-like events, numbered from start, with
// ids "ev-<number>", and returns once JetStream stored them all.
func publishEvents(ctx context.Context, t testing.TB, js jetstream.JetStream, start, n int) {
	t.Helper()
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := start; i < start+n; i++ {
		vm := vmKeys[i%len(vmKeys)]
		env, err := events.New(events.TypeState, "test", vm, events.State{VMKey: vm, From: events.StatusPending, To: events.StatusTrusted, ChangedAt: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		env.ID = "ev-" + strconv.Itoa(i)
		body, _ := env.Marshal()
		msg := &nats.Msg{Subject: events.StateSubject(vm), Data: body, Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, env.ID)
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) >= 512 {
			waitAcks(ctx, t, futures)
			futures = futures[:0]
		}
	}
	waitAcks(ctx, t, futures)
}

func waitAcks(ctx context.Context, t testing.TB, fs []jetstream.PubAckFuture) {
	t.Helper()
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-ctx.Done():
			t.Fatalf("publish: %v", ctx.Err())
		}
	}
}

// checkpointSize returns the size of the log's published checkpoint (0 if
// there is none yet).
func checkpointSize(dir string) uint64 {
	d, err := auditlog.OpenDir(dir)
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

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logRecords reads every record of the log (verifying it) and returns them.
func logRecords(t testing.TB, dir, pub string, trusted ...[]byte) ([]auditlog.Record, *auditlog.Report) {
	t.Helper()
	v, err := auditlog.LoadVerifier(pub)
	if err != nil {
		t.Fatal(err)
	}
	d, err := auditlog.OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := auditlog.Verify(context.Background(), d, v, auditlog.VerifyOptions{Trusted: trusted})
	if err != nil {
		t.Fatalf("verify: %v", err)
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

// checkExactlyOnce checks that the records hold the events ev-0..ev-(n-1)
// each exactly once, in stream order.
func checkExactlyOnce(t testing.TB, recs []auditlog.Record, n int) {
	t.Helper()
	seen := make(map[string]int, n)
	var lastSeq uint64
	for i := range recs {
		r := &recs[i]
		if r.Seq <= lastSeq {
			t.Errorf("record %d: seq %d after %d", i, r.Seq, lastSeq)
		}
		lastSeq = r.Seq
		if r.Kind != auditlog.KindEvent {
			t.Errorf("record %d: kind %s (%s)", i, r.Kind, r.Reason)
			continue
		}
		env, err := r.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		seen[env.ID]++
	}
	for i := range n {
		id := "ev-" + strconv.Itoa(i)
		if seen[id] != 1 {
			t.Errorf("event %s logged %d times", id, seen[id])
		}
	}
	if len(recs) != n {
		t.Errorf("log has %d records, want %d", len(recs), n)
	}
}

// publishOn publishes one policy event on each subject, in order, and
// returns once JetStream stored them all.
func publishOn(ctx context.Context, t testing.TB, js jetstream.JetStream, subjects ...string) {
	t.Helper()
	for _, subject := range subjects {
		env, err := events.New(events.TypePolicy, "test", subject, events.Policy{Name: "p", Version: 1})
		if err != nil {
			t.Fatal(err)
		}
		body, _ := env.Marshal()
		if _, err := js.Publish(ctx, subject, body); err != nil {
			t.Fatalf("publish on %s: %v", subject, err)
		}
	}
}

// editStream changes a stream's configuration as an operator (or an
// intruder) with stream edit rights would.
func editStream(ctx context.Context, t testing.TB, js jetstream.JetStream, name string, edit func(*jetstream.StreamConfig)) {
	t.Helper()
	s, err := js.Stream(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	edit(&cfg)
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatalf("edit stream %s: %v", name, err)
	}
}
