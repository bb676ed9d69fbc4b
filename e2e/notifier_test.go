package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
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
