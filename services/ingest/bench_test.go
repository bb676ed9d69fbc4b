package ingest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
)

const (
	benchBatch   = 500 // events per delivery (Event Grid allows up to 5000 and 1 MB)
	benchSenders = 4   // concurrent deliveries, as Event Grid sends them
	benchIDLen   = 36  // width of the generated event ids
)

// benchEvents builds one delivery's events with fixed-width ids at known
// offsets, so that every delivery can get fresh ids by overwriting digits
// (duplicates would be de-duplicated by JetStream and measure nothing).
type benchEvents struct {
	events [][]byte
	idAt   []int
}

func newBenchEvents() benchEvents {
	var be benchEvents
	t0 := time.Date(2026, 11, 20, 10, 0, 0, 0, time.UTC)
	ops := []string{"write", "start/action", "deallocate/action", "restart/action", "powerOff/action"}
	for i := range benchBatch {
		id := strings.Repeat("0", benchIDLen)
		ev := []byte(armEG(id, fmt.Sprintf("vm-%04d", i%200), ops[i%len(ops)], t0.Add(time.Duration(i)*time.Millisecond)))
		be.events = append(be.events, ev)
		be.idAt = append(be.idAt, bytes.Index(ev, []byte(`"id":"`+id))+len(`"id":"`))
	}
	return be
}

// delivery returns the events of delivery n (fresh ids) and the body.
func (be benchEvents) delivery(n int) ([][]byte, []byte) {
	evs := make([][]byte, len(be.events))
	var body bytes.Buffer
	body.WriteByte('[')
	for i, tmpl := range be.events {
		ev := bytes.Clone(tmpl)
		copy(ev[be.idAt[i]:be.idAt[i]+benchIDLen], fmt.Sprintf("%018d-%017d", n, i))
		evs[i] = ev
		if i > 0 {
			body.WriteByte(',')
		}
		body.Write(ev)
	}
	body.WriteByte(']')
	return evs, body.Bytes()
}

// BenchmarkWebhookIngest posts Event Grid deliveries of 500 real-shaped ARM
// events to the webhook on loopback, from 4 concurrent senders; each is
// answered 200 only after all its events are stored on VIGIL_RAW. In the
// same run it publishes the same events with raw JetStream async publishes
// (per delivery: publish all, await all acks) as the baseline. Reported:
// events/s through the webhook, raw-events/s, and x-raw = their ratio.
func BenchmarkWebhookIngest(b *testing.B) {
	srv := natstest.Start(b)
	ctx := context.Background()
	conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: "bench", Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	if err := events.Provision(ctx, conn.JS, events.Topology{}); err != nil {
		b.Fatal(err)
	}
	addr := make(chan string, 1)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(rctx, Config{Options: service.Options{Conn: conn, Logger: testLogger()}, WebhookAddr: "127.0.0.1:0", WebhookSecrets: []string{testSecret},
			IntakeOnly: true, OnWebhookListen: func(a string) { addr <- a }})
	}()
	defer func() { cancel(); <-done }()
	url := "http://" + <-addr + "/eventgrid?secret=" + testSecret

	be := newBenchEvents()
	n := b.N
	deliveries := make([][][]byte, n)
	bodies := make([][]byte, 2*n)
	for i := range n {
		deliveries[i], _ = be.delivery(i)
		_, bodies[i] = be.delivery(n + i)
	}
	total := float64(n * benchBatch)

	// Baseline: raw JetStream async publishing of the same payloads.
	bnc, err := nats.Connect(srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	defer bnc.Close()
	bjs, err := jetstream.New(bnc, jetstream.WithPublishAsyncMaxPending(16384))
	if err != nil {
		b.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchSenders}}
	publishRaw := func(i int) error {
		futures := make([]jetstream.PubAckFuture, 0, benchBatch)
		for j, ev := range deliveries[i] {
			m := &nats.Msg{Subject: events.RawSubject("baseline"), Data: ev, Header: nats.Header{}}
			m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("base-%d-%d", i, j))
			f, err := bjs.PublishMsgAsync(m)
			if err != nil {
				return err
			}
			futures = append(futures, f)
		}
		for _, f := range futures {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				return err
			}
		}
		return nil
	}
	postHook := func(i int) error {
		resp, err := client.Post(url, "application/cloudevents-batch+json", bytes.NewReader(bodies[i]))
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("delivery %d answered %d", i, resp.StatusCode)
		}
		return nil
	}
	// The two are measured in alternating rounds, so that load from
	// elsewhere on the machine affects both alike.
	const round = 20
	var rawDur, hookDur time.Duration
	b.ResetTimer()
	for lo := 0; lo < n; lo += round {
		hi := min(lo+round, n)
		phases := []struct {
			f   func(int) error
			dur *time.Duration
		}{{publishRaw, &rawDur}, {postHook, &hookDur}}
		if (lo/round)%2 == 1 {
			phases[0], phases[1] = phases[1], phases[0]
		}
		for _, ph := range phases {
			var next atomic.Int64
			next.Store(int64(lo))
			start := time.Now()
			runSenders(b, func() error {
				for {
					i := int(next.Add(1)) - 1
					if i >= hi {
						return nil
					}
					if err := ph.f(i); err != nil {
						return err
					}
				}
			})
			*ph.dur += time.Since(start)
		}
	}
	b.StopTimer()

	stream, err := conn.JS.Stream(ctx, events.StreamRaw)
	if err != nil {
		b.Fatal(err)
	}
	info, err := stream.Info(ctx, jetstream.WithSubjectFilter(events.RawSubject(OriginEventGrid)))
	if err != nil {
		b.Fatal(err)
	}
	if got := info.State.Subjects[events.RawSubject(OriginEventGrid)]; got != uint64(total) {
		b.Fatalf("%d events stored through the webhook, want %d", got, int(total))
	}
	hookRate, rawRate := total/hookDur.Seconds(), total/rawDur.Seconds()
	b.ReportMetric(hookRate, "events/s")
	b.ReportMetric(rawRate, "raw-events/s")
	b.ReportMetric(hookRate/rawRate, "x-raw")
}

func runSenders(b *testing.B, f func() error) {
	var wg sync.WaitGroup
	errs := make(chan error, benchSenders)
	for range benchSenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}
