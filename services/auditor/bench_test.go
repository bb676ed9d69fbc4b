package auditor

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// benchEntries is how many events one auditor run logs; one benchmark
// operation is benchPairs runs of the auditor and of bare Tessera each.
const (
	benchEntries = 100_000
	benchPairs   = 4
)

// BenchmarkAuditAppend measures the sustained rate of the whole auditor
// (consume from JetStream, encode, append to the Tessera log, make durable,
// acknowledge, with checkpoints signed and published every second) over
// benchEntries pre-published events, and as a baseline bare Tessera
// appends of the very same entries with the same options, in the same run.
// One op is benchPairs such pairs.
func BenchmarkAuditAppend(b *testing.B) {
	var auditTime, bareTime time.Duration
	for range b.N {
		b.StopTimer()
		h := newHarness(b, func(c *Config) {
			// Every run of the same events has its own consumer and log,
			// checkpoints every second as by default.
			c.CheckpointInterval = 0
		})
		signer, err := auditlog.LoadSigner(h.cfg.SignerKeyFile)
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		msgs := publishBench(ctx, b, h.js, benchEntries)
		entries := make([][]byte, len(msgs))
		for i, m := range msgs {
			entries[i] = auditlog.EncodeMessage(m)
		}
		// Pairs of runs in alternating order over the same events (each
		// auditor run with its own consumer and log), so that both see
		// the same machine: it is shared and its load comes and goes.
		for r := range benchPairs {
			bare := func() {
				bareTime += bareTessera(ctx, b, filepath.Join(h.dir, fmt.Sprintf("bare-%d", r)), signer, entries)
			}
			audit := func() {
				auditTime += runAuditBench(b, h, filepath.Join(h.dir, fmt.Sprintf("log-%d", r)), fmt.Sprintf("bench-%d", r))
			}
			if r%2 == 0 {
				bare()
				audit()
			} else {
				audit()
				bare()
			}
		}
		cancel()
	}
	total := float64(b.N * benchPairs * benchEntries)
	auditRate := total / auditTime.Seconds()
	bareRate := total / bareTime.Seconds()
	b.ReportMetric(auditRate, "entries/s")
	b.ReportMetric(bareRate, "tessera-entries/s")
	b.ReportMetric(auditRate/bareRate, "x-tessera")
}

// runAuditBench runs an auditor over the pre-published events and returns
// the time until every one is durable and acknowledged.
func runAuditBench(b *testing.B, h *harness, logDir, cons string) time.Duration {
	b.Helper()
	b.StartTimer()
	start := time.Now()
	stop := h.start(func(c *Config) { c.LogDir, c.Consumer = logDir, cons })
	h.waitConsumer(cons, "every event acknowledged", 10*time.Minute, func(i *jetstream.ConsumerInfo) bool {
		return i.AckFloor.Stream >= benchEntries
	})
	d := time.Since(start)
	b.StopTimer()
	if err := stop(); err != nil {
		b.Fatal(err)
	}
	// The log is complete and verifies.
	l := h.log()
	l.dir = logDir
	if _, rep := l.records(b); rep.Events != benchEntries {
		b.Fatalf("log has %d events, want %d", rep.Events, benchEntries)
	}
	return d
}

// publishBench publishes n events and returns them as the auditor will see
// them (without the store timestamp, which only the stream knows).
func publishBench(ctx context.Context, b *testing.B, js jetstream.JetStream, n int) []auditlog.Message {
	b.Helper()
	msgs := make([]auditlog.Message, 0, n)
	futures := make([]jetstream.PubAckFuture, 0, 1024)
	for i := range n {
		vm := vmKeys[i%len(vmKeys)]
		env, err := events.New(events.TypeVerdict, "bench", vm, events.Verdict{
			ID: "v-" + strconv.Itoa(i), VMKey: vm, Platform: "azure-sev-snp", Status: events.VerdictAffirming,
			EvidenceDigest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
			PolicyID:       "default", PolicyVersion: 3, VerifierBuild: "bench", IssuedAt: time.Now().UTC(),
			TCB: &events.TCB{BootLoader: 3, TEE: 0, SNP: 8, Microcode: 115, Product: "Genoa"},
		})
		if err != nil {
			b.Fatal(err)
		}
		body, _ := env.Marshal()
		msg := &nats.Msg{Subject: events.VerdictSubject(vm), Data: body, Header: nats.Header{}}
		msg.Header.Set(nats.MsgIdHdr, env.ID)
		f, err := js.PublishMsgAsync(msg)
		if err != nil {
			b.Fatal(err)
		}
		futures = append(futures, f)
		if len(futures) == cap(futures) {
			natstest.WaitAcks(ctx, b, futures)
			futures = futures[:0]
		}
		msgs = append(msgs, auditlog.Message{Stream: events.StreamEvents, Seq: uint64(i + 1), Subject: msg.Subject, Stored: time.Now(), Body: body})
	}
	natstest.WaitAcks(ctx, b, futures)
	return msgs
}

// bareTessera appends entries to a new log as fast as Tessera can, with the
// auditor's batch options, every entry added in one loop. It returns the
// time until every entry is durable.
func bareTessera(ctx context.Context, b *testing.B, dir string, signer interface {
	Name() string
	KeyHash() uint32
	Sign([]byte) ([]byte, error)
}, entries [][]byte) time.Duration {
	b.Helper()
	appCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	driver, err := posix.New(appCtx, posix.Config{Path: dir})
	if err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
	start := time.Now()
	app, shutdown, _, err := tessera.NewAppender(appCtx, driver, tessera.NewAppendOptions().
		WithCheckpointSigner(signer).WithCheckpointInterval(DefaultCheckpointInterval).WithBatching(DefaultBatchSize, tesseraMaxAge))
	if err != nil {
		b.Fatal(err)
	}
	tes := make([]*tessera.Entry, len(entries))
	for i, e := range entries {
		tes[i] = tessera.NewEntry(e)
	}
	futures := make([]tessera.IndexFuture, len(entries))
	for i, e := range tes {
		futures[i] = app.Add(appCtx, e)
	}
	for _, f := range futures {
		if _, err := f(); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	b.StopTimer()
	if err := shutdown(appCtx); err != nil {
		b.Fatal(err)
	}
	return d
}
