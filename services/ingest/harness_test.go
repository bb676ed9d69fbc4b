package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

const (
	testSecret = "test-secret-0123456789"
	testSub    = "00000000-0000-4000-8000-0000000000ee"
	testRG     = "cvm-prod"
)

type harness struct {
	t    *testing.T
	nats *natstest.Server
	conn *bus.Conn
	js   jetstream.JetStream
	arm  *armfake.ARM
	url  string // webhook URL with the secret
	// hooks are given to the ingest that run starts.
	hooks hooks

	stop func()
}

// newHarness starts NATS and a fake ARM; call run to start ingest.
func newHarness(t *testing.T) *harness {
	t.Helper()
	srv := natstest.Start(t)
	conn, err := bus.Connect(context.Background(), bus.Config{URL: srv.URL(), Name: "ingest-test", Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &harness{t: t, nats: srv, conn: conn, js: conn.JS, arm: armfake.New()}
}

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// run starts ingest with cfg (defaults filled in for tests) and stops it at
// cleanup or by h.stop().
func (h *harness) run(mod func(*Config)) {
	h.t.Helper()
	addr := make(chan string, 1)
	cfg := Config{
		Options:        service.Options{Conn: h.conn, Provision: true, Logger: testLogger()},
		WebhookAddr:    "127.0.0.1:0",
		WebhookSecrets: []string{testSecret},
		ARM:            arm.Config{Credential: h.arm.Credential(), ClientOptions: h.arm.ClientOptions()},
		Enrichment: arm.EnricherConfig{Debounce: 200 * time.Millisecond, NotFoundConfirm: 200 * time.Millisecond,
			RetryBase: 100 * time.Millisecond, Fresh: time.Millisecond},
		ReconcileInterval: -1,
		ReconcileGrace:    time.Millisecond,
		Concurrency:       8,
		OnWebhookListen:   func(a string) { addr <- a },
	}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, h.hooks) }()
	select {
	case a := <-addr:
		h.url = "http://" + a + "/eventgrid?secret=" + testSecret
	case err := <-done:
		cancel()
		h.t.Fatalf("ingest did not start: %v", err)
	case <-time.After(20 * time.Second):
		cancel()
		h.t.Fatal("ingest did not start in time")
	}
	stopped := false
	h.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("ingest: %v", err)
			}
		case <-time.After(20 * time.Second):
			h.t.Error("ingest did not stop")
		}
	}
	h.t.Cleanup(h.stop)
}

func (h *harness) post(body string) int {
	h.t.Helper()
	resp, err := http.Post(h.url, "application/json", strings.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// envelopes returns every message on stream matching filter.
func (h *harness) envelopes(stream, filter string) []events.Envelope {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := h.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{FilterSubjects: []string{filter}})
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	// Polling tests call this many times: remove the consumer at once
	// rather than leave it to expire.
	defer func() { _ = h.js.DeleteConsumer(context.Background(), stream, info.Name) }()
	var out []events.Envelope
	for remaining := int(info.NumPending); remaining > 0; {
		batch, err := c.Fetch(remaining, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			h.t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			env, err := events.Parse(m.Data())
			if err != nil {
				h.t.Fatalf("bad envelope on %s: %v", m.Subject(), err)
			}
			out = append(out, env)
			n++
		}
		if n == 0 {
			break
		}
		remaining -= n
	}
	return out
}

func (h *harness) lifecycles(vm string) []events.Lifecycle {
	h.t.Helper()
	var out []events.Lifecycle
	for _, env := range h.envelopes(events.StreamEvents, events.LifecycleSubject(vm)) {
		var lc events.Lifecycle
		if err := env.Decode(events.TypeLifecycle, &lc); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, lc)
	}
	return out
}

func (h *harness) configs(vm string) []events.Config {
	h.t.Helper()
	var out []events.Config
	for _, env := range h.envelopes(events.StreamEvents, events.ConfigSubject(vm)) {
		var c events.Config
		if err := env.Decode(events.TypeConfig, &c); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func (h *harness) record(vm string) (events.VM, bool) {
	h.t.Helper()
	kv, err := h.js.KeyValue(context.Background(), events.BucketVMs)
	if err != nil {
		h.t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), vm)
	if err != nil {
		return events.VM{}, false
	}
	var rec events.VM
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		h.t.Fatal(err)
	}
	return rec, true
}

func (h *harness) count(stream, filter string) int {
	h.t.Helper()
	if stream != events.StreamJobs {
		return len(h.envelopes(stream, filter))
	}
	// A work-queue stream allows no ordered consumer: count by subject.
	return h.stored(stream, filter)
}

// stored counts the messages on subjects matching filter from the stream's
// subject state, without a consumer (cheap enough to poll).
func (h *harness) stored(stream, filter string) int {
	h.t.Helper()
	s, err := h.js.Stream(context.Background(), stream)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(filter))
	if err != nil {
		h.t.Fatal(err)
	}
	n := 0
	for _, c := range info.State.Subjects {
		n += int(c)
	}
	return n
}

// eventually polls cond until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- Azure event builders ---

func vmResourceID(name string) string {
	return normalize.NewVMID(testSub, testRG, name).ResourceID
}

func vmKey(name string) string { return normalize.NewVMID(testSub, testRG, name).Key() }

var opTypes = map[string]string{
	"write": normalize.TypeWriteSuccess, "delete": normalize.TypeDeleteSuccess,
}

// armEG is an Event Grid schema ARM event as Azure sends it (lower-case
// "resourcegroups", "evidence": [], numeric claims).
func armEG(id, vm, op string, at time.Time) string {
	typ, ok := opTypes[op]
	if !ok {
		typ = normalize.TypeActionSuccess
	}
	uri := "/subscriptions/" + testSub + "/resourcegroups/" + testRG + "/providers/Microsoft.Compute/virtualMachines/" + vm
	return fmt.Sprintf(`{"subject":%q,"eventType":%q,"id":%q,"data":{"authorization":{"scope":%q,"action":"Microsoft.Compute/virtualMachines/%s","evidence":[]},
	"claims":{"iat":1732112233,"aud":"https://management.core.windows.net/","groups":["g"]},"correlationId":"corr-%s","resourceProvider":"Microsoft.Compute",
	"resourceUri":%q,"operationName":"Microsoft.Compute/virtualMachines/%s","status":"Succeeded","subscriptionId":%q,"tenantId":"t"},
	"dataVersion":"2","metadataVersion":"1","eventTime":%q,"topic":"/subscriptions/%s"}`,
		uri, typ, id, uri, op, id, uri, op, testSub, at.UTC().Format(time.RFC3339Nano), testSub)
}

// healthCE is a CloudEvents AvailabilityStatusChanged event.
func healthCE(id, vm, state string, at time.Time) string {
	target := vmResourceID(vm)
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/subscriptions/%s","type":%q,"subject":"%s/providers/Microsoft.ResourceHealth/availabilityStatuses/current",
	"time":%q,"data":{"resourceInfo":{"id":"%s/providers/Microsoft.ResourceHealth/availabilityStatuses/current","properties":{"targetResourceId":%q,
	"targetResourceType":"Microsoft.Compute/virtualMachines","availabilityState":%q,"occurredTime":%q}},"operationalInfo":{"resourceEventTime":%q},"apiVersion":"2023-12-01"}}`,
		id, testSub, normalize.TypeHealthAvailability, target, at.UTC().Format(time.RFC3339Nano), target, target, state,
		at.UTC().Format(time.RFC3339Nano), at.UTC().Format(time.RFC3339Nano))
}

func batch(evs ...string) string { return "[" + strings.Join(evs, ",") + "]" }
