package bus_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// syncBuffer is a log destination written from Serve's goroutines.
type syncBuffer struct {
	mu  chan struct{}
	buf bytes.Buffer
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{mu: make(chan struct{}, 1)} }

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu <- struct{}{}
	defer func() { <-b.mu }()
	return b.buf.String()
}

// TestServeReplyCheck: with WithReplyCheck a responder answers a request
// only when its reply subject lies under the requester's allowed inbox
// prefix; any other request reaches no handler and gets no answer, and
// the refusal is logged without the payload and counted.
func TestServeReplyCheck(t *testing.T) {
	const subject = "test.reply.check"
	const allowed = "_INBOX_attest-worker"
	srv := natstest.Start(t)
	reader := sdkmetric.NewManualReader()
	logs := newSyncBuffer()
	responder, err := bus.Connect(t.Context(), bus.Config{URL: srv.URL(), Name: "responder",
		Logger: slog.New(slog.NewTextHandler(logs, nil)), MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		t.Fatal(err)
	}
	defer responder.Close()
	var handled atomic.Int32
	_, err = responder.Serve(t.Context(), subject, "", func(_ context.Context, data []byte) ([]byte, error) {
		handled.Add(1)
		return append([]byte("answer to "), data...), nil
	}, bus.WithReplyCheck(func(subj, reply string) bool {
		return subj == subject && busauth.ReplyAllowed(allowed, reply)
	}))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		prefix   string // the requester's inbox prefix; "" for the default
		answered bool
	}{
		{"under the allowed prefix", allowed, true},
		{"default inbox", "", false},
		{"another principal's inbox", "_INBOX_ingest", false},
		{"a prefix that only starts like it", allowed + "x", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			requester, err := bus.Connect(t.Context(), bus.Config{URL: srv.URL(), InboxPrefix: tc.prefix})
			if err != nil {
				t.Fatal(err)
			}
			defer requester.Close()
			before := handled.Load()
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			got, err := requester.RequestRaw(ctx, subject, []byte("secret-payload"))
			if tc.answered {
				if err != nil || string(got) != "answer to secret-payload" {
					t.Fatalf("RequestRaw = %q, %v; want the answer", got, err)
				}
				return
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("RequestRaw = %q, %v; want no answer (deadline exceeded)", got, err)
			}
			if handled.Load() != before {
				t.Fatal("the handler ran for a refused request")
			}
		})
	}

	// Three refusals, each logged with its reply subject and without the
	// payload.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	if got := counter(rm, "vigil.bus.replies_refused"); got != 3 {
		t.Errorf("vigil.bus.replies_refused = %d, want 3", got)
	}
	out := logs.String()
	if n := strings.Count(out, "request refused"); n != 3 {
		t.Errorf("%d refusals logged, want 3:\n%s", n, out)
	}
	if !strings.Contains(out, "reply=_INBOX_ingest.") {
		t.Errorf("the refusal does not name the reply subject:\n%s", out)
	}
	if strings.Contains(out, "secret-payload") {
		t.Errorf("the log holds the payload:\n%s", out)
	}
}

func counter(rm metricdata.ResourceMetrics, name string) int64 {
	var n int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == name {
				for _, dp := range s.DataPoints {
					n += dp.Value
				}
			}
		}
	}
	return n
}

// TestOperatorMode: a connection with a user JWT is in operator mode, one
// without is not.
func TestOperatorMode(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := set.Creds(busauth.Auditor)
	if err != nil {
		t.Fatal(err)
	}
	op := natstest.StartOperator(t, set)
	plain := natstest.Start(t)
	for _, tc := range []struct {
		name string
		cfg  bus.Config
		want bool
	}{
		{"user JWT", bus.Config{URL: op.URL(), UserJWT: creds.JWT, NKeySeed: creds.Seed, InboxPrefix: busauth.InboxPrefix(busauth.Auditor)}, true},
		{"no credentials", bus.Config{URL: plain.URL()}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := bus.Connect(t.Context(), tc.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if got := c.OperatorMode(); got != tc.want {
				t.Fatalf("OperatorMode = %v, want %v", got, tc.want)
			}
		})
	}
}
