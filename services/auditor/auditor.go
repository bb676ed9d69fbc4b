package auditor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"k8s.io/klog/v2"

	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// Run runs an auditor until ctx is done: it waits for the log's writer lock
// (as a standby while another auditor holds it), then logs every message of
// the stream. It returns nil after a clean shutdown on ctx cancellation and
// an error when the log cannot be written (the process should exit, and a
// standby takes over).
func Run(ctx context.Context, c Config) error { return run(ctx, c, hooks{}) }

// hooks are where tests act inside a running auditor; production has none.
type hooks struct {
	// afterDurable is called after each batch is durable, with the number
	// of batches made durable so far (crash tests).
	afterDurable func(batch int)
	// failAdd makes the write of the message with this stream sequence
	// fail as a failed Tessera flush would, while later ones succeed.
	failAdd func(seq uint64) bool
	// loseDelivery makes the delivery of the message with this stream
	// sequence vanish before the writer sees it, as a pull response lost
	// while the consumer's leader moves does.
	loseDelivery func(seq uint64) bool
}

func run(ctx context.Context, c Config, h hooks) error {
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

	svc, err := service.Start(ctx, "auditor", cfg.Options)
	if err != nil {
		return err
	}
	svc.Handle("GET /log/", logHandler(cfg.LogDir))
	svc.Go("log", func(ctx context.Context) error { return writeWhileLocked(ctx, cfg, h, svc, log, signer) })
	return svc.Wait()
}

// writeWhileLocked waits for the log's writer lock, as a standby while
// another auditor holds it, then writes the log. The service is ready
// while it writes.
func writeWhileLocked(ctx context.Context, cfg Config, h hooks, svc *service.Service, log *slog.Logger, signer note.Signer) error {
	setRole := func(r Role) {
		if r == RoleWriter {
			svc.MarkReady()
		} else {
			svc.MarkUnready()
		}
		if cfg.OnRole != nil {
			cfg.OnRole(r)
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
	defer svc.MarkUnready()
	return runWriter(ctx, cfg, h, svc, log, signer)
}

// RouteTesseraLogs sends the log output of Tessera (which logs through
// klog) to log. klog is process-wide, so this affects the whole process;
// commands call it once at start.
func RouteTesseraLogs(log *slog.Logger) { klog.SetSlogLogger(log) }

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
