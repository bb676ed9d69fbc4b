package ingest

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// get answers a GET of url with its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// TestMetricsNotOnWebhookListener: the webhook listener, which faces Azure
// (and so the internet), answers deliveries and nothing else; /metrics,
// /healthz and /readyz are served on the ops listener, which in turn does
// not take deliveries.
func TestMetricsNotOnWebhookListener(t *testing.T) {
	tel, err := telemetry.Setup(t.Context(), telemetry.Config{Service: "vigil-ingest-test", NoRuntimeMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(ctx)
	})
	h := newHarness(t)
	opsAddr := make(chan string, 1)
	h.run(func(c *Config) {
		c.ARM.Credential = nil
		c.Telemetry = tel
		c.HTTPAddr = "127.0.0.1:0"
		c.OnListen = func(a string) { opsAddr <- a }
	})
	ops := "http://" + <-opsAddr
	webhook := strings.TrimSuffix(h.url[:strings.Index(h.url, "?")], DefaultWebhookPath)
	if code := h.post(batch(armEG("m-1", "vm-m", "write", time.Now().Add(-time.Minute)))); code != 200 {
		t.Fatalf("delivery answered %d", code)
	}
	tests := []struct {
		name   string
		url    string
		status int
		has    string // in the body
	}{
		{"metrics on the webhook listener", webhook + "/metrics", 404, ""},
		{"liveness on the webhook listener", webhook + "/healthz", 404, ""},
		{"readiness on the webhook listener", webhook + "/readyz", 404, ""},
		{"another path on the webhook listener", webhook + "/", 404, ""},
		{"metrics on the ops listener", ops + "/metrics", 200, "vigil_ingest_webhook_requests"},
		{"liveness on the ops listener", ops + "/healthz", 200, `"status"`},
		{"readiness on the ops listener", ops + "/readyz", 200, `"jetstream"`},
		{"the webhook path on the ops listener", ops + DefaultWebhookPath, 404, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, body := get(t, tt.url)
			if status != tt.status || !strings.Contains(body, tt.has) {
				t.Fatalf("GET %s: %d %.200q, want %d with %q", tt.url, status, body, tt.status, tt.has)
			}
		})
	}
	resp, err := http.Post(ops+DefaultWebhookPath+"?secret="+testSecret, "application/json", strings.NewReader(batch(armEG("m-2", "vm-m", "start/action", time.Now()))))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("a delivery to the ops listener answered %d, want 404", resp.StatusCode)
	}
}
