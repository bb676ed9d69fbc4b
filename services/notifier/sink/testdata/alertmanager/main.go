// Command alertmanager serves a real Alertmanager (v0.35) for
// TestAlertmanagerReal: its HTTP API (api.New and Register, as the
// alertmanager binary mounts it), its in-memory alert store and its
// silences, with a configuration whose route sends everything to a receiver
// that does nothing. The alertmanager command itself does not build from
// the Go module (its web UI is built by npm and not in the module), so this
// wires the same packages without the UI.
//
// It listens on 127.0.0.1 on a free port, prints "listening on ADDR" on
// standard output, and exits when its standard input closes.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/common/route"

	"github.com/prometheus/alertmanager/api"
	"github.com/prometheus/alertmanager/config"
	"github.com/prometheus/alertmanager/dispatch"
	"github.com/prometheus/alertmanager/eventrecorder"
	"github.com/prometheus/alertmanager/featurecontrol"
	"github.com/prometheus/alertmanager/labelset"
	"github.com/prometheus/alertmanager/provider/mem"
	"github.com/prometheus/alertmanager/silence"
)

const configYAML = `
global:
  resolve_timeout: 5m
route:
  receiver: "null"
  group_by: [alertname]
receivers:
  - name: "null"
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "alertmanager:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	reg := prometheus.NewRegistry()
	rec := eventrecorder.NopRecorder()

	cfg, err := config.Load(configYAML)
	if err != nil {
		return err
	}
	silences, err := silence.New(silence.Options{Retention: time.Hour, Logger: logger, Metrics: reg, EventRecorder: rec})
	if err != nil {
		return err
	}
	silencer := silence.NewSilencer(silences, logger, rec)
	alerts, err := mem.NewAlerts(ctx, 30*time.Minute, 0, silencer, logger, rec, reg, featurecontrol.NoopFlags{})
	if err != nil {
		return err
	}
	defer alerts.Close()
	// No dispatcher: nothing is routed anywhere, so /api/v2/alerts/groups
	// stays empty; /api/v2/alerts is the store's, as in the real binary.
	noGroups := func(context.Context, func(*dispatch.Route) bool, dispatch.AlertFilter) (dispatch.AlertGroups, map[model.Fingerprint][]string, error) {
		return nil, nil, nil
	}
	apih, err := api.New(api.Options{Alerts: alerts, Silences: silences, Logger: logger, Registry: reg, Timeout: time.Minute, GroupFunc: noGroups,
		RequestDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "alertmanager_http_request_duration_seconds",
			Help: "Histogram of latencies for HTTP requests.",
		}, []string{"handler", "method", "code"}),
	})
	if err != nil {
		return err
	}
	apih.Update(cfg, func(ctx context.Context, ls labelset.LabelSet) { silencer.Mutes(ctx, ls) })
	mux := apih.Register(route.New(), "/")

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(l)
	fmt.Printf("listening on %s\n", l.Addr())
	_, _ = io.Copy(io.Discard, os.Stdin) // until the test closes it
	return srv.Close()
}
