package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// TestNotifierKilledMidDelivery: vigil-notifier killed with SIGKILL while
// its sink has not answered a delivery delivers that alert after a
// restart, with the same webhook-id.
func TestNotifierKilledMidDelivery(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	build(t, bin, "nats-server", "vigil", "vigil-notifier")
	b := func(name string) string { return filepath.Join(bin, name) }
	dir := t.TempDir()

	natsAddr := freeAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: %s:%s\njetstream { store_dir: %q }\n", host, port, filepath.Join(dir, "nats"))), 0o644); err != nil {
		t.Fatal(err)
	}
	natsProc := start(t, b("nats-server"), "nats-server", "-c", conf)
	waitTCP(t, natsProc, natsAddr)
	natsURL := "nats://" + natsAddr
	if out, err := exec.Command(b("vigil"), "provision", "--nats-url", natsURL).CombinedOutput(); err != nil {
		t.Fatalf("vigil provision: %v\n%s", err, out)
	}

	type attempt struct{ id string }
	var mu sync.Mutex
	var attempts []attempt
	inFlight := make(chan struct{}, 1)
	sinkSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set(sink.HeaderAllowedOrigin, r.Header.Get(sink.HeaderRequestOrigin))
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := sink.Verify([]string{e2eWebhookSecret}, r.Header, body, time.Now(), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		mu.Lock()
		first := len(attempts) == 0
		attempts = append(attempts, attempt{id: r.Header.Get(sink.HeaderWebhookID)})
		mu.Unlock()
		if first {
			inFlight <- struct{}{}
			<-r.Context().Done() // the notifier dies before an answer
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	defer sinkSrv.Close()

	keyFile := filepath.Join(dir, "notifier.key")
	notifier := func() *proc {
		addr := freeAddr(t)
		p := start(t, b("vigil-notifier"), "notifier", "-nats-url", natsURL, "-http", addr, "-key-file", keyFile, "-generate-key",
			"-allow-private-sinks", "-ack-wait", "2s")
		waitReady(t, p, "http://"+addr+"/readyz")
		return p
	}
	first := notifier()
	if out, err := exec.Command(b("vigil"), "alerts", "subscribe", "--id", "kill", "--sink", sinkSrv.URL+"/", "--secret", e2eWebhookSecret,
		"--allow-private-sinks", "--nats-url", natsURL).CombinedOutput(); err != nil {
		t.Fatalf("vigil alerts subscribe: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := bus.Connect(ctx, bus.Config{URL: natsURL, Name: "e2e"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.PublishAlert(ctx, "e2e", "", events.Alert{Severity: events.SeverityCritical, Code: "vm.untrusted",
		VMKey: "aldtmn2tg7p3rh5huznzu5dk3n", Message: "untrusted"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inFlight:
	case <-ctx.Done():
		t.Fatalf("no delivery:\n%s", first.output())
	}
	if err := first.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-first.done
	notifier()
	for {
		mu.Lock()
		n := len(attempts)
		got := append([]attempt(nil), attempts...)
		mu.Unlock()
		if n >= 2 {
			if got[1].id != got[0].id {
				t.Errorf("redelivered with webhook-id %s, first %s", got[1].id, got[0].id)
			}
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("not delivered after the restart (%d attempts)", n)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// refuseFirstAttempts is a sink in front of next (vigil alerts receive)
// that answers the first attempt of every notification (by webhook-id)
// 503, so that each is delivered again, and records every attempt's
// webhook-id. The handshake goes through.
type refuseFirstAttempts struct {
	next     *httputil.ReverseProxy
	mu       sync.Mutex
	attempts []string
}

func newRefuseFirstAttempts(t *testing.T, next string) *refuseFirstAttempts {
	u, err := url.Parse(next)
	if err != nil {
		t.Fatal(err)
	}
	return &refuseFirstAttempts{next: httputil.NewSingleHostReverseProxy(u)}
}

func (f *refuseFirstAttempts) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		id := r.Header.Get(sink.HeaderWebhookID)
		f.mu.Lock()
		first := !slices.Contains(f.attempts, id)
		f.attempts = append(f.attempts, id)
		f.mu.Unlock()
		if first {
			http.Error(w, "try again", http.StatusServiceUnavailable)
			return
		}
	}
	f.next.ServeHTTP(w, r)
}

func (f *refuseFirstAttempts) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.attempts)
}

// received parses what vigil alerts receive --json printed: one CloudEvent
// a line (other lines are skipped).
func received(out string) []sink.CloudEvent {
	var evs []sink.CloudEvent
	for _, line := range strings.Split(out, "\n") {
		var ev sink.CloudEvent
		if json.Unmarshal([]byte(line), &ev) == nil && ev.ID != "" {
			evs = append(evs, ev)
		}
	}
	return evs
}

// firedAndResolved reports whether evs (in the order received) hold a
// firing notification under key and, after it, a resolved one; if not,
// why.
func firedAndResolved(evs []sink.CloudEvent, key string) (string, bool) {
	fired := false
	for _, ev := range evs {
		if ev.Data.Key != key {
			continue
		}
		switch ev.Data.State {
		case sink.Firing:
			fired = true
		case sink.Resolved:
			if !fired {
				return "the resolve of " + key + " came before its firing", false
			}
			if ev.Type != sink.TypeResolved {
				return fmt.Sprintf("the resolve of %s has type %s", key, ev.Type), false
			}
			return "", true
		}
	}
	if fired {
		return "no resolve of " + key + " after its firing", false
	}
	return "no firing of " + key, false
}

// oneIDPerNotification checks that every notification received (its key,
// state and alert) came under one webhook-id, that no webhook-id named two
// notifications, and that each had a refused attempt before: its retry
// kept the id.
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
		tries := 0
		for _, id := range attempts {
			if id == ev.ID {
				tries++
			}
		}
		if tries < 2 {
			return fmt.Errorf("webhook-id %s (%s %s) delivered after %d attempt(s), want a refused one and a retry", ev.ID, a.Code, ev.Data.State, tries)
		}
	}
	return nil
}
