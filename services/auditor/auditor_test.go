package auditor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startAuditor runs an auditor in the background; the returned function
// stops it and returns Run's error.
func startAuditor(t testing.TB, cfg Config) func() error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		err := Run(ctx, cfg)
		if err != nil && ctx.Err() == nil {
			fmt.Fprintln(os.Stderr, "auditor stopped early:", err)
		}
		done <- err
	}()
	stopped := false
	var err error
	stop := func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				t.Errorf("auditor did not stop")
			}
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestAuditorLogsEveryEventAndPublishesCheckpoints(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")

	// Events published before the auditor starts and while it runs.
	publishEvents(ctx, t, js, 0, 300)
	stop := startAuditor(t, Config{
		Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, VerifierKeyFile: vkey,
		CheckpointInterval: 100 * time.Millisecond,
	})
	publishEvents(ctx, t, js, 300, 700)
	waitFor(t, 30*time.Second, "checkpoint covering 1000 entries", func() bool { return checkpointSize(logDir) >= 1000 })

	// Acknowledged only after the durable write: the ack floor follows.
	cons, err := js.Consumer(ctx, events.StreamEvents, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "ack floor 1000", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream == 1000
	})
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs, rep := logRecords(t, logDir, vkey)
	checkExactlyOnce(t, recs, 1000)
	if rep.LastSeq != 1000 {
		t.Errorf("LastSeq %d", rep.LastSeq)
	}

	// Checkpoints were published on vigil.audit.checkpoint, signed.
	st, err := js.Stream(ctx, events.StreamCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetLastMsgForSubject(ctx, events.SubjectCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Vigil-Log-Size"); got != "1000" {
		t.Errorf("last published checkpoint size %q, want 1000", got)
	}
	// The stream refuses deletion of checkpoints.
	if err := st.DeleteMsg(ctx, msg.Sequence); err == nil {
		t.Error("deleting a published checkpoint succeeded")
	}

	// A restart resumes without duplicates.
	publishEvents(ctx, t, js, 1000, 50)
	stop = startAuditor(t, Config{Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond})
	waitFor(t, 30*time.Second, "checkpoint covering 1050 entries", func() bool { return checkpointSize(logDir) >= 1050 })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs, _ = logRecords(t, logDir, vkey, msg.Data)
	checkExactlyOnce(t, recs, 1050)
}

func TestAuditorLogsGapsForMissingSequences(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")

	// Sequences 10, 11 and 20 share a subject, every other one has its own.
	subjects := make([]string, 20)
	for i := range subjects {
		subjects[i] = events.PolicySubject(fmt.Sprintf("p%d", i+1))
	}
	subjects[9], subjects[10], subjects[19] = events.PolicySubject("shared"), events.PolicySubject("shared"), events.PolicySubject("shared")
	publishOn(ctx, t, js, subjects...)
	// Before the auditor saw them, limits drop 10 and 11 (one message per
	// subject), then 1..3 (15 messages).
	editStream(ctx, t, js, events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 })
	editStream(ctx, t, js, events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgs = 15 })
	stop := startAuditor(t, Config{Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond})
	waitFor(t, 30*time.Second, "checkpoint", func() bool { return checkpointSize(logDir) >= 17 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	recs, rep := logRecords(t, logDir, vkey)
	if rep.Gaps != 2 || rep.MissingSeqs != 5 || rep.Events != 15 || rep.LastSeq != 20 {
		t.Fatalf("report %+v", rep)
	}
	if recs[0].Kind != "gap" || recs[0].FirstSeq != 1 || recs[0].Seq != 3 {
		t.Errorf("first record %+v", recs[0])
	}
}

func TestRunRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{},
		{LogDir: "x"},
		{LogDir: "x", SignerKeyFile: "k", CheckpointInterval: time.Millisecond},
		{LogDir: "x", SignerKeyFile: "k", BatchSize: -1},
		{LogDir: "x", SignerKeyFile: "k", StreamCheckInterval: time.Millisecond},
		{LogDir: "x", SignerKeyFile: "k", GenerateKeys: true},
	} {
		if err := Run(context.Background(), cfg); !errors.Is(err, ErrConfig) {
			t.Errorf("Run(%+v) = %v, want ErrConfig", cfg, err)
		}
	}
}

func TestAuditorServesHealthAndLog(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := filepath.Join(dir, "keys", "signer.key"), filepath.Join(dir, "keys", "signer.pub")
	logDir := filepath.Join(dir, "log")
	addr := make(chan string, 1)
	stop := startAuditor(t, Config{
		Options: service.Options{NATS: natsConfig(nc), HTTPAddr: "127.0.0.1:0", OnListen: func(a string) { addr <- a }, Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, VerifierKeyFile: vkey, GenerateKeys: true,
		CheckpointInterval: 100 * time.Millisecond,
	})
	base := "http://" + <-addr
	publishEvents(ctx, t, js, 0, 10)
	waitFor(t, 20*time.Second, "checkpoint", func() bool { return checkpointSize(logDir) >= 10 })
	get := func(path string) (int, string) {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, 10*time.Second, "ready", func() bool { code, _ := get("/readyz"); return code == http.StatusOK })
	if code, body := get("/log/checkpoint"); code != http.StatusOK || !strings.HasPrefix(body, "test.vigil/audit\n") && !strings.HasPrefix(body, auditlog.DefaultOrigin+"\n") {
		t.Fatalf("checkpoint: %d %q", code, body)
	}
	if code, _ := get("/log/tile/0/000.p/10"); code != http.StatusOK {
		t.Fatalf("tile: %d", code)
	}
	for _, p := range []string{"/log/" + LockFileName, "/log/.state/treeState", "/log/", "/log/tile/"} {
		if code, _ := get(p); code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", p, code)
		}
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The generated key pair verifies the log.
	if _, rep := logRecords(t, logDir, vkey); rep.Events != 10 {
		t.Fatalf("report %+v", rep)
	}
}

func TestAuditorRefusesLogAheadOfStream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, _ := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")
	publishEvents(ctx, t, js, 0, 20)
	stop := startAuditor(t, Config{Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond})
	waitFor(t, 20*time.Second, "checkpoint", func() bool { return checkpointSize(logDir) >= 20 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The stream is recreated: its sequences start again at 1.
	if err := js.DeleteStream(ctx, events.StreamEvents); err != nil {
		t.Fatal(err)
	}
	natstest.Provision(t, nc, events.Topology{})
	publishEvents(ctx, t, js, 100, 5)
	err := Run(ctx, Config{Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey})
	if !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("Run = %v, want ErrStreamMismatch", err)
	}
}

// TestAuditorRepairsHoleAfterWriteFailure makes one entry's write fail while
// the entries after it are written: the auditor stops without acknowledging,
// and the next start logs the missing message, so the log again accounts
// for every sequence exactly once (one entry out of stream order).
func TestAuditorRepairsHoleAfterWriteFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")
	publishEvents(ctx, t, js, 0, 300)
	cfg := Config{Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond}
	failing := cfg
	failing.failAdd = func(seq uint64) bool { return seq == 120 }
	err := Run(ctx, failing)
	if err == nil || !strings.Contains(err.Error(), "log write failed") {
		t.Fatalf("Run = %v, want a write failure", err)
	}
	cons, err := js.Consumer(ctx, events.StreamEvents, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(ctx); err != nil || info.AckFloor.Stream >= 120 {
		t.Fatalf("acknowledged past the failed write: %+v %v", info.AckFloor, err)
	}
	// The log now misses sequence 120 (and maybe more after it).
	publishEvents(ctx, t, js, 300, 50)
	stop := startAuditor(t, cfg)
	waitFor(t, 30*time.Second, "checkpoint covering every event", func() bool { return checkpointSize(logDir) >= 350 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_, rep := logRecords(t, logDir, vkey)
	if rep.LastSeq != 350 || rep.Events != 350 || rep.OutOfOrder == 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestAuditorContinuesTraces(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, _ := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))

	env, err := events.New(events.TypePolicy, "test", "", events.Policy{Name: "p", Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := env.Marshal()
	msg := &nats.Msg{Subject: events.PolicySubject("p"), Data: body, Header: nats.Header{}}
	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	msg.Header["traceparent"] = []string{"00-" + traceID + "-00f067aa0ba902b7-01"}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	stop := startAuditor(t, Config{
		Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger(), Telemetry: &telemetry.Telemetry{TracerProvider: tp}},
		LogDir:  logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond,
	})
	waitFor(t, 20*time.Second, "checkpoint", func() bool { return checkpointSize(logDir) >= 1 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var entry, batch bool
	for _, s := range spans.GetSpans() {
		switch s.Name {
		case "auditor.log_entry":
			entry = s.SpanContext.TraceID().String() == traceID && s.Parent.SpanID().String() == "00f067aa0ba902b7"
		case "auditor.append_batch":
			batch = true
		}
	}
	if !entry || !batch {
		t.Fatalf("spans (entry in the event's trace %v, batch %v): %v", entry, batch, spans.GetSpans())
	}
}
