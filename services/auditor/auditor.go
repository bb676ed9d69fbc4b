package auditor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync/atomic"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"k8s.io/klog/v2"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// Run runs an auditor until ctx is done: it waits for the log's writer lock
// (as a standby while another auditor holds it), then logs every message of
// the stream. It returns nil after a clean shutdown on ctx cancellation and
// an error when the log cannot be written (the process should exit, and a
// standby takes over).
func Run(ctx context.Context, c Config) error {
	cfg, err := c.withDefaults()
	if err != nil {
		return err
	}
	log := cfg.Logger.With("component", "auditor", "log", cfg.LogDir)
	if cfg.GenerateKeys {
		if err := EnsureKeys(cfg.SignerKeyFile, cfg.VerifierKeyFile, cfg.Origin); err != nil {
			return fmt.Errorf("auditor: keys: %w", err)
		}
	}
	signer, err := auditlog.LoadSigner(cfg.SignerKeyFile)
	if err != nil {
		return fmt.Errorf("auditor: %w", err)
	}
	if cfg.VerifierKeyFile != "" {
		if err := auditlog.EnsureKeyFiles(cfg.SignerKeyFile, cfg.VerifierKeyFile, cfg.Origin); err != nil {
			return fmt.Errorf("auditor: keys: %w", err)
		}
	}
	if err := os.MkdirAll(cfg.LogDir, 0o755); err != nil {
		return fmt.Errorf("auditor: log directory: %w", err)
	}

	nc, js, closeNATS, err := connect(ctx, cfg)
	if err != nil {
		return ignoreCancel(ctx, err)
	}
	defer closeNATS()

	var role atomic.Value // Role
	setRole := func(r Role) {
		role.Store(r)
		if cfg.OnRole != nil {
			cfg.OnRole(r)
		}
	}
	if cfg.HTTPAddr != "" {
		health := cfg.Health
		if health == nil {
			health = telemetry.NewHealth()
		}
		health.AddReadiness("nats", telemetry.NATSConnected(nc))
		health.AddReadiness("audit-log-writer", func(context.Context) error {
			if r, _ := role.Load().(Role); r != RoleWriter {
				return errors.New("not writing the log (standby or starting)")
			}
			return nil
		})
		srv, err := telemetry.Listen(cfg.HTTPAddr, cfg.Telemetry, health)
		if err != nil {
			return err
		}
		srv.Handle("GET /log/", logHandler(cfg.LogDir))
		if cfg.OnListen != nil {
			cfg.OnListen(srv.Addr())
		}
		srvCtx, stopSrv := context.WithCancel(context.WithoutCancel(ctx))
		srvDone := make(chan struct{})
		go func() {
			defer close(srvDone)
			if err := srv.Serve(srvCtx); err != nil {
				log.Error("http server", "error", err)
			}
		}()
		defer func() {
			stopSrv()
			<-srvDone
		}()
	}
	if !cfg.SkipProvision {
		if err := events.Provision(ctx, js, cfg.Topology); err != nil && !errors.Is(err, context.Canceled) {
			return fmt.Errorf("auditor: provision: %w", err)
		}
	}

	lock, err := acquireLock(ctx, cfg.LogDir, cfg.LockPollInterval, func(holder string) {
		log.Info("another auditor writes this log; waiting as standby", "holder", strings.TrimSpace(holder))
		setRole(RoleStandby)
	})
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lock.release()
	log.Info("writing the audit log", "origin", signer.Name())
	setRole(RoleWriter)
	err = runWriter(ctx, cfg, log, js, signer)
	role.Store(Role(""))
	return err
}

// RouteTesseraLogs sends the log output of Tessera (which logs through
// klog) to log. klog is process-wide, so this affects the whole process;
// commands call it once at start.
func RouteTesseraLogs(log *slog.Logger) { klog.SetSlogLogger(log) }

func connect(ctx context.Context, cfg Config) (*nats.Conn, jetstream.JetStream, func(), error) {
	if cfg.JetStream != nil {
		return cfg.JetStream.Conn(), cfg.JetStream, func() {}, nil
	}
	if cfg.Conn != nil {
		js, err := jetstream.New(cfg.Conn)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("auditor: jetstream: %w", err)
		}
		return cfg.Conn, js, func() {}, nil
	}
	nc := cfg.NATS
	if nc.Name == "" {
		nc.Name = "vigil-auditor"
	}
	if nc.Logger == nil {
		nc.Logger = cfg.Logger
	}
	nc.WaitForServer = true
	nc.TracerProvider, nc.MeterProvider = cfg.TracerProvider, cfg.MeterProvider
	conn, err := bus.Connect(ctx, nc)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("auditor: %w", err)
	}
	return conn.NC, conn.JS, func() { _ = conn.Close() }, nil
}

// logHandler serves the log read-only in the C2SP tlog-tiles layout:
// /log/checkpoint, /log/tile/..., /log/tile/entries/... Nothing else in the
// directory (the lock file, Tessera's private state) is served.
func logHandler(dir string) http.Handler {
	files := http.StripPrefix("/log/", http.FileServer(http.Dir(dir)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/log/")
		switch {
		case p == "checkpoint":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
		case strings.HasPrefix(p, "tile/") && !strings.HasSuffix(p, "/") && !strings.Contains(p, ".."):
			w.Header().Set("Content-Type", "application/octet-stream")
			if !strings.Contains(p, ".p/") {
				w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
			}
		default:
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}
