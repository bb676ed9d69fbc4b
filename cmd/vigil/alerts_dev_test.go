package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// driftCode is the alert code of the tamper scenario's configuration drift
// (boot diagnostics turned on a healthy VM, then off again).
const driftCode = "config.boot_diagnostics.screenshots"

// TestDevAlertWebhook: vigil dev --alert-webhook subscribes the webhook
// at start (handshake included) and the tamper scenario's alerts reach
// vigil alerts receive, signed with the dev secret: a VM's vm.untrusted,
// and the configuration drift's finding firing and then, once fixed,
// resolved under the same key. The first attempt of every notification is
// answered 503: each is delivered again, with the same webhook-id, and no
// notification is delivered under two.
func TestDevAlertWebhook(t *testing.T) {
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	recv := &receiver{out: &out, secrets: []string{devAlertWebhookSecret}, origin: "*", asJSON: true, done: func() {}}
	var mu sync.Mutex
	handshake := false
	var attempts []string // webhook-id of every POST, in arrival order
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			mu.Lock()
			handshake = true
			mu.Unlock()
			recv.ServeHTTP(w, r)
			return
		}
		id := r.Header.Get(sink.HeaderWebhookID)
		mu.Lock()
		first := !slices.Contains(attempts, id)
		attempts = append(attempts, id)
		mu.Unlock()
		if first {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
		recv.ServeHTTP(w, r)
	}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		out, stderr string
		err         error
	}
	done := make(chan result, 1)
	data := filepath.Join(t.TempDir(), "dev")
	go func() {
		o, e, err := runVigil(ctx, "dev",
			"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", data, "--ops-listen", "", "--http", "127.0.0.1:0", "--console", "",
			"--vms", "6", "--interval", "3s", "--grace", "4s", "--tamper-after", "3s", "--duration", "90s", "--alert-webhook", srv.URL+"/hook")
		done <- result{o, e, err}
	}()
	// Until the drift's resolve has come through, or vigil dev ends.
	var res result
	finished := false
	for deadline := time.Now().Add(80 * time.Second); !finished; {
		if _, ok := firedAndResolved(parseReceived(t, out.String()), driftCode); ok {
			break
		}
		select {
		case res = <-done:
			finished = true
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			break
		}
	}
	cancel()
	if !finished {
		res = <-done
	}
	if res.err != nil && !errors.Is(res.err, context.Canceled) {
		t.Fatalf("vigil dev: %v\nstdout:\n%s\nstderr:\n%s", res.err, res.out, res.stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if !handshake {
		t.Error("no webhook validation handshake")
	}
	got := parseReceived(t, out.String())
	var codes []string
	for _, ev := range got {
		codes = append(codes, ev.Data.Alert.Code+"/"+string(ev.Data.State))
	}
	if !slices.Contains(codes, "vm.untrusted/firing") {
		t.Errorf("deliveries %v: no vm.untrusted firing", codes)
	}
	if why, ok := firedAndResolved(got, driftCode); !ok {
		t.Errorf("configuration drift: %s; deliveries %v", why, codes)
	}
	if err := oneIDPerNotification(got, attempts); err != nil {
		t.Error(err)
	}
}

// parseReceived reads the CloudEvents vigil alerts receive --json printed,
// one a line.
func parseReceived(t *testing.T, out string) []sink.CloudEvent {
	t.Helper()
	var evs []sink.CloudEvent
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var ev sink.CloudEvent
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("vigil alerts receive printed %q: %v", line, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// firedAndResolved reports whether evs (in the order received) hold a
// firing notification of an alert with code and, after it, a resolved
// one under the same key; if not, why.
func firedAndResolved(evs []sink.CloudEvent, code string) (string, bool) {
	var key string
	for _, ev := range evs {
		if ev.Data.State == sink.Firing && ev.Data.Alert.Code == code {
			key = ev.Data.Key
			break
		}
	}
	if key == "" {
		return "no " + code + " firing", false
	}
	fired := false
	for _, ev := range evs {
		if ev.Data.Key != key {
			continue
		}
		switch {
		case ev.Data.State == sink.Firing:
			fired = true
		case ev.Data.State == sink.Resolved && fired:
			if ev.Type != sink.TypeResolved {
				return fmt.Sprintf("the resolve of %s has type %s", key, ev.Type), false
			}
			return "", true
		}
	}
	return "no resolve of " + key + " after its firing", false
}

// oneIDPerNotification checks that every notification received (its key,
// state and alert) came under one webhook-id, that no webhook-id named two
// notifications, and that every notification had been attempted before
// (the first attempts were refused): its retry kept the id.
func oneIDPerNotification(evs []sink.CloudEvent, attempts []string) error {
	type notification struct{ key, state, code, cause, at, msg string }
	ids := map[notification]string{}
	byID := map[string]notification{}
	for _, ev := range evs {
		a := ev.Data.Alert
		n := notification{ev.Data.Key, string(ev.Data.State), a.Code, a.CauseID, a.At.String(), a.Message}
		if id, ok := ids[n]; ok && id != ev.ID {
			return fmt.Errorf("notification %+v delivered with webhook-ids %s and %s", n, id, ev.ID)
		}
		if other, ok := byID[ev.ID]; ok && other != n {
			return fmt.Errorf("webhook-id %s names two notifications: %+v and %+v", ev.ID, other, n)
		}
		ids[n], byID[ev.ID] = ev.ID, n
		if n := countOf(attempts, ev.ID); n < 2 {
			return fmt.Errorf("webhook-id %s (%s %s) delivered after %d attempt(s), want a refused one and a retry", ev.ID, a.Code, ev.Data.State, n)
		}
	}
	return nil
}

func countOf(xs []string, x string) int {
	n := 0
	for _, v := range xs {
		if v == x {
			n++
		}
	}
	return n
}
