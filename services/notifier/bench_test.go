package notifier_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// BenchmarkAlertDelivery reports the notifier's deliveries/s to a local
// webhook sink (b.N alerts published while it runs, distinct keys),
// p99-ms from an alert published to the sink's acknowledgement, one alert
// at a time (unloaded), and x-raw: deliveries/s over the rate of a plain
// HTTP client posting the same payloads with the same concurrency, in the
// same run.
func BenchmarkAlertDelivery(b *testing.B) {
	e := newEnv(b)
	var got atomic.Int64
	var mu sync.Mutex
	latency := map[string]time.Time{}
	seen := make(chan string, 1024)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions {
			w.Header().Set(sink.HeaderAllowedOrigin, "*")
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusNoContent)
		got.Add(1)
		if bytes.Contains(body, []byte(`"code":"probe"`)) {
			var ev sink.CloudEvent
			if json.Unmarshal(body, &ev) == nil {
				mu.Lock()
				latency[ev.Data.Key] = time.Now()
				mu.Unlock()
				select {
				case seen <- ev.Data.Key:
				default:
				}
			}
		}
	}))
	defer srv.Close()
	cfg := e.config()
	cfg.Concurrency = notifier.DefaultConcurrency
	e.start(cfg)
	e.subscribe("bench", srv.URL, nil)
	ctx := context.Background()

	// Unloaded latency: one alert at a time.
	const probes = 200
	var lat []time.Duration
	for i := range probes {
		key := fmt.Sprintf("probe/%d", i)
		start := time.Now()
		e.alert(events.Alert{Code: "probe", VMKey: vmA, Key: key})
		for k := range seen {
			if k == key {
				break
			}
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	p99 := lat[len(lat)*99/100]

	// Throughput, in alternating rounds (the machine is shared and noisy):
	// a quarter of b.N alerts published asynchronously and delivered by
	// the notifier, then the same payloads posted by a plain HTTP client
	// with as many in flight as the notifier (16).
	client := &http.Client{Timeout: 15 * time.Second}
	post := func(payloads [][]byte) {
		work := make(chan []byte)
		var wg sync.WaitGroup
		for range cfg.Concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for p := range work {
					req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL, bytes.NewReader(p))
					req.Header.Set("Content-Type", sink.ContentTypeCloudEvents)
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						continue
					}
					_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
					resp.Body.Close()
				}
			}()
		}
		for _, p := range payloads {
			work <- p
		}
		close(work)
		wg.Wait()
	}
	const rounds = 4
	var notifierTime, rawTime time.Duration
	b.ResetTimer()
	for r := range rounds {
		n := b.N / rounds
		if r == rounds-1 {
			n = b.N - (rounds-1)*(b.N/rounds)
		}
		// The alerts and the raw client's payloads are made before either
		// side is timed: encoding alerts is the producers' work, and the
		// raw client gets its payloads ready-made.
		bodies := make([][]byte, 0, n)
		payloads := make([][]byte, 0, n)
		for i := range n {
			a := events.Alert{Severity: events.SeverityCritical, Code: "vm.untrusted", VMKey: vmA, Message: "bench", At: time.Now().UTC(),
				Key: fmt.Sprintf("%s/bench-%d-%d", vmA, r, i), State: events.AlertFiring}
			env, err := events.New(events.TypeAlert, "bench", events.AlertSubject(a.Severity, a.VMKey), a)
			if err != nil {
				b.Fatal(err)
			}
			body, _ := env.Marshal()
			bodies = append(bodies, body)
			ce, _ := json.Marshal(sink.CloudEventOf(sink.Notification{ID: env.ID, Key: a.Key, State: sink.Firing, Alert: a, Time: a.At}))
			payloads = append(payloads, ce)
		}
		subject := events.AlertSubject(events.SeverityCritical, vmA)
		base := got.Load()
		start := time.Now()
		for _, body := range bodies {
			if _, err := e.conn.JS.PublishAsync(subject, body); err != nil {
				b.Fatal(err)
			}
		}
		<-e.conn.JS.PublishAsyncComplete()
		for deadline := time.Now().Add(time.Minute); got.Load()-base < int64(n); {
			if time.Now().After(deadline) {
				b.Fatalf("%d of %d alerts delivered in a minute", got.Load()-base, n)
			}
			time.Sleep(time.Millisecond)
		}
		notifierTime += time.Since(start)
		start = time.Now()
		post(payloads)
		rawTime += time.Since(start)
	}
	b.StopTimer()
	rate := float64(b.N) / notifierTime.Seconds()
	raw := float64(b.N) / rawTime.Seconds()

	b.ReportMetric(rate, "deliveries/s")
	b.ReportMetric(float64(p99.Microseconds())/1000, "p99-ms")
	b.ReportMetric(raw, "raw/s")
	b.ReportMetric(rate/raw, "x-raw")
	b.ReportMetric(0, "ns/op")
}
