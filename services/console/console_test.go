package console

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
)

// TestRun runs the console in operator mode with the console principal's
// credentials: it reads the buckets into its page, and a status change
// reaches an open live stream as a "vm" event with the new status.
func TestRun(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	srv.JetStream() // provisions, as the administrator
	writer := func(p busauth.Principal) jetstream.JetStream {
		js, err := jetstream.New(srv.ConnectAs(p))
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	ingest, worker := writer(busauth.Ingest), writer(busauth.AttestWorker)
	creds, err := set.Creds(busauth.Console)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rid := "/subscriptions/s/resourceGroups/rg-web/providers/Microsoft.Compute/virtualMachines/web-1"
	vm := events.VMKey(rid)
	putJSON(ctx, t, ingest, events.BucketVMs, vm, events.VM{VMKey: vm, ResourceID: rid, Name: "web-1", ResourceGroup: "rg-web", Platform: "azure-sev-snp"})
	putJSON(ctx, t, worker, events.BucketStatus, vm, events.VMStatus{VMKey: vm, Status: events.StatusTrusted, Since: time.Now()})

	urls := make(chan string, 1)
	ready := make(chan struct{})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Run(runCtx, Config{
			Options: service.Options{
				NATS:   bus.Config{URL: srv.URL(), UserJWT: creds.JWT, NKeySeed: creds.Seed},
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				Ready:  func() { close(ready) },
			},
			Addr:            "127.0.0.1:0",
			OnConsoleListen: func(u string) { urls <- u },
			Heartbeat:       200 * time.Millisecond,
		})
	}()
	var base string
	select {
	case base = <-urls:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("the console never listened")
	}
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-ctx.Done():
		t.Fatal("the console never became ready")
	}
	if body := get(ctx, t, base+"/"); !strings.Contains(body, "web-1") || !strings.Contains(body, `data-status="trusted"`) {
		t.Fatalf("the fleet page does not show web-1 trusted:\n%s", body)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	putJSON(ctx, t, worker, events.BucketStatus, vm, events.VMStatus{VMKey: vm, Status: events.StatusUntrusted, Since: time.Now(),
		Reasons: []events.Reason{{Code: "policy.debug_enabled"}}})
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	event, heartbeat, row := "", false, false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == ": heartbeat":
			heartbeat = true
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: ") && event == "vm":
			var d struct{ Key, Status, HTML string }
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &d); err != nil {
				t.Fatal(err)
			}
			row = row || d.Key == vm && d.Status == "untrusted" && strings.Contains(d.HTML, "policy.debug_enabled")
		}
		if row && heartbeat {
			stop()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			return
		}
	}
	t.Fatalf("the live stream ended without the untrusted row: %v", sc.Err())
}

func putJSON(ctx context.Context, t *testing.T, js jetstream.JetStream, bucket, key string, v any) {
	t.Helper()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, key, b); err != nil {
		t.Fatal(err)
	}
}

func get(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}
