package auditor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func TestAuditorLogsEveryEventAndPublishesCheckpoints(t *testing.T) {
	h := newHarness(t)

	// Events published before the auditor starts and while it runs.
	h.publish(0, 300)
	stop := h.start()
	h.publish(300, 700)
	h.waitCheckpoint(1000)

	// Acknowledged only after the durable write: the ack floor follows.
	h.waitAcked(1000)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs, rep := h.records()
	checkExactlyOnce(t, recs, 1000)
	if rep.LastSeq != 1000 {
		t.Errorf("LastSeq %d", rep.LastSeq)
	}

	// Checkpoints were published on vigil.audit.checkpoint, signed.
	st, err := h.js.Stream(h.ctx, events.StreamCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := st.GetLastMsgForSubject(h.ctx, events.SubjectCheckpoint)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("Vigil-Log-Size"); got != "1000" {
		t.Errorf("last published checkpoint size %q, want 1000", got)
	}
	// The stream refuses deletion of checkpoints.
	if err := st.DeleteMsg(h.ctx, msg.Sequence); err == nil {
		t.Error("deleting a published checkpoint succeeded")
	}

	// A restart resumes without duplicates.
	h.publish(1000, 50)
	stop = h.start()
	h.waitCheckpoint(1050)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs, _ = h.records(msg.Data)
	checkExactlyOnce(t, recs, 1050)
}

func TestAuditorLogsGapsForMissingSequences(t *testing.T) {
	h := newHarness(t)

	// Sequences 10, 11 and 20 share a subject, every other one has its own.
	subjects := make([]string, 20)
	for i := range subjects {
		subjects[i] = events.PolicySubject(fmt.Sprintf("p%d", i+1), "test")
	}
	subjects[9], subjects[10], subjects[19] = events.PolicySubject("shared", "test"), events.PolicySubject("shared", "test"), events.PolicySubject("shared", "test")
	h.publishOn(subjects...)
	// Before the auditor saw them, limits drop 10 and 11 (one message per
	// subject), then 1..3 (15 messages).
	h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 })
	h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgs = 15 })
	stop := h.start()
	h.waitCheckpoint(17)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	recs, rep := h.records()
	if !fieldsMatch(t, "report", rep,
		eq("Gaps", rep.Gaps, 2), eq("MissingSeqs", rep.MissingSeqs, 5), eq("Events", rep.Events, 15), eq("LastSeq", rep.LastSeq, 20)) {
		t.FailNow()
	}
	fieldsMatch(t, "first record", recs[0],
		eq("Kind", recs[0].Kind, auditlog.KindGap), eq("FirstSeq", recs[0].FirstSeq, 1), eq("Seq", recs[0].Seq, 3))
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
	addr := make(chan string, 1)
	keys := filepath.Join(t.TempDir(), "keys") // made by the auditor
	h := newHarness(t, func(c *Config) {
		c.HTTPAddr, c.OnListen = "127.0.0.1:0", func(a string) { addr <- a }
		c.SignerKeyFile, c.VerifierKeyFile, c.GenerateKeys = filepath.Join(keys, "signer.key"), filepath.Join(keys, "signer.pub"), true
	})
	stop := h.start()
	base := "http://" + <-addr
	h.publish(0, 10)
	h.waitCheckpoint(10)
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
	code, body := get("/log/checkpoint")
	if code != http.StatusOK {
		t.Fatalf("checkpoint: status %d (%q), want 200", code, body)
	}
	if !strings.HasPrefix(body, "test.vigil/audit\n") && !strings.HasPrefix(body, auditlog.DefaultOrigin+"\n") {
		t.Fatalf("checkpoint %q: want the origin line test.vigil/audit or %s", body, auditlog.DefaultOrigin)
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
	if _, rep := h.records(); rep.Events != 10 {
		t.Fatalf("report %+v", rep)
	}
}

func TestAuditorRefusesLogAheadOfStream(t *testing.T) {
	h := newHarness(t)
	h.publish(0, 20)
	stop := h.start()
	h.waitCheckpoint(20)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The stream is recreated: its sequences start again at 1.
	if err := h.js.DeleteStream(h.ctx, events.StreamEvents); err != nil {
		t.Fatal(err)
	}
	natstest.Provision(t, h.nc, events.Topology{})
	h.publish(100, 5)
	if err := h.run(); !errors.Is(err, ErrStreamMismatch) {
		t.Fatalf("Run = %v, want ErrStreamMismatch", err)
	}
}

// TestAuditorLogsMessagesWhoseDeliveryWasLost loses deliveries as a pull
// response lost while a clustered consumer's leader moves does: the
// consumer goes on, and the writer's acknowledgement of a later message
// (AckAll) would acknowledge the lost one too. The writer reads each lost
// message from the stream and logs it in its place, next to gap records
// for messages deleted around them, instead of stopping.
func TestAuditorLogsMessagesWhoseDeliveryWasLost(t *testing.T) {
	h := newHarness(t)
	// 200 and 250 share their subjects with 260 and 270, and a limit of
	// one message per subject drops them before the auditor reaches them:
	// 200 just after a lost delivery (199), 250 just before one (251).
	subjects := make([]string, 320)
	for i := range subjects {
		subjects[i] = events.PolicySubject(fmt.Sprintf("p%d", i+1), "test")
	}
	subjects[199], subjects[259] = events.PolicySubject("a", "test"), events.PolicySubject("a", "test")
	subjects[249], subjects[269] = events.PolicySubject("b", "test"), events.PolicySubject("b", "test")
	h.publishOn(subjects...)
	h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 })
	lost := map[uint64]bool{1: true, 37: true, 38: true, 199: true, 251: true, 319: true}
	var mu sync.Mutex
	stop := h.startWith(hooks{loseDelivery: func(seq uint64) bool {
		mu.Lock()
		defer mu.Unlock()
		l := lost[seq]
		delete(lost, seq) // lost once; a redelivery arrives
		return l
	}})
	h.waitCheckpoint(320)
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	recs, rep := h.records()
	if !fieldsMatch(t, "report", rep, eq("Events", rep.Events, 318), eq("Gaps", rep.Gaps, 2), eq("MissingSeqs", rep.MissingSeqs, 2),
		eq("LastSeq", rep.LastSeq, 320), eq("OutOfOrder", rep.OutOfOrder, 0)) {
		t.FailNow()
	}
	for i, r := range recs {
		if want := uint64(i + 1); r.Seq != want {
			t.Fatalf("record %d: seq %d, want %d", i, r.Seq, want)
		}
		if r.Kind == auditlog.KindGap && r.Seq != 200 && r.Seq != 250 {
			t.Errorf("record %d: gap record for %d..%d, which the stream held", i, r.FirstSeq, r.Seq)
		}
	}
}

// TestAuditorRepairsHoleAfterWriteFailure makes one entry's write fail while
// the entries after it are written: the auditor stops without acknowledging,
// and the next start logs the missing message, so the log again accounts
// for every sequence exactly once (one entry out of stream order).
func TestAuditorRepairsHoleAfterWriteFailure(t *testing.T) {
	h := newHarness(t)
	h.publish(0, 300)
	err := h.runWith(hooks{failAdd: func(seq uint64) bool { return seq == 120 }})
	if err == nil || !strings.Contains(err.Error(), "log write failed") {
		t.Fatalf("Run = %v, want a write failure", err)
	}
	info, err := h.consumerInfo(DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream >= 120 {
		t.Fatalf("acknowledged past the failed write: ack floor %+v", info.AckFloor)
	}
	// The log now misses sequence 120 (and maybe more after it).
	h.publish(300, 50)
	stop := h.start()
	h.waitCheckpoint(350)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	_, rep := h.records()
	if !fieldsMatch(t, "report", rep,
		eq("LastSeq", rep.LastSeq, 350), eq("Events", rep.Events, 350), holds("OutOfOrder", rep.OutOfOrder > 0, rep.OutOfOrder, "> 0")) {
		t.FailNow()
	}
}

func TestAuditorContinuesTraces(t *testing.T) {
	spans := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
	h := newHarness(t, func(c *Config) { c.Telemetry = &telemetry.Telemetry{TracerProvider: tp} })

	env, err := events.New(events.TypePolicy, "test", "", events.Policy{Name: "p", Version: 1})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := env.Marshal()
	msg := &nats.Msg{Subject: events.PolicySubject("p", "test"), Data: body, Header: nats.Header{}}
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	msg.Header["traceparent"] = []string{"00-" + traceID + "-" + parentID + "-01"}
	if _, err := h.js.PublishMsg(h.ctx, msg); err != nil {
		t.Fatal(err)
	}
	stop := h.start()
	h.waitCheckpoint(1)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	var entries, batches int
	for _, s := range spans.GetSpans() {
		switch s.Name {
		case "auditor.log_entry":
			entries++
			// In the event's trace, a child of the span that published it.
			fieldsMatch(t, "auditor.log_entry span", s,
				eq("TraceID", s.SpanContext.TraceID().String(), traceID), eq("Parent", s.Parent.SpanID().String(), parentID))
		case "auditor.append_batch":
			batches++
		}
	}
	if entries == 0 {
		t.Errorf("no auditor.log_entry span: %v", spans.GetSpans())
	}
	if batches == 0 {
		t.Errorf("no auditor.append_batch span: %v", spans.GetSpans())
	}
}
