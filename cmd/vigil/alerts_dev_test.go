package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// TestDevAlertWebhook: vigil dev --alert-webhook subscribes the webhook
// at start (handshake included) and the tamper scenario's alerts reach it,
// signed with the dev secret.
func TestDevAlertWebhook(t *testing.T) {
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []sink.CloudEvent
	handshake := false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			mu.Lock()
			handshake = true
			mu.Unlock()
			w.Header().Set(sink.HeaderAllowedOrigin, r.Header.Get(sink.HeaderRequestOrigin))
			return
		}
		body, _ := io.ReadAll(r.Body)
		if err := sink.Verify([]string{devAlertWebhookSecret}, r.Header, body, time.Now(), 0); err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		var ev sink.CloudEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
	}))
	defer srv.Close()
	data := filepath.Join(t.TempDir(), "dev")
	out, stderr, err := runVigil(context.Background(), "dev",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", data, "--ops-listen", "", "--http", "127.0.0.1:0", "--console", "",
		"--vms", "6", "--interval", "3s", "--grace", "4s", "--tamper-after", "3s", "--duration", "15s", "--alert-webhook", srv.URL+"/hook")
	if err != nil {
		t.Fatalf("vigil dev: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	mu.Lock()
	defer mu.Unlock()
	if !handshake {
		t.Error("no webhook validation handshake")
	}
	var codes []string
	for _, ev := range got {
		codes = append(codes, ev.Data.Alert.Code+"/"+string(ev.Data.State))
	}
	if !strings.Contains(strings.Join(codes, " "), "vm.untrusted/firing") {
		t.Errorf("deliveries %v: no vm.untrusted firing", codes)
	}
}
