package console

import (
	"context"
	"fmt"

	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// Name is the service's name (and its bus principal's).
const Name = "console"

// Run runs the console until ctx ends: it follows the bus into its index,
// verifies the audit log, and serves the web console at cfg.Addr. It is
// ready once the buckets' current values are in the index.
func Run(ctx context.Context, c Config) error {
	cfg, err := c.withDefaults()
	if err != nil {
		return err
	}
	audit, err := newAuditView(cfg.AuditLogDir, cfg.AuditURL, cfg.AuditKeyFile, cfg.AuditTimeout)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	web, err := telemetry.ListenBare(cfg.Addr)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	svc, err := service.Start(ctx, Name, cfg.Options)
	if err != nil {
		_ = web.Close()
		return err
	}
	index := NewIndex()
	srv, err := newServer(cfg, index, audit)
	if err != nil {
		_ = web.Close()
		svc.Stop()
		_ = svc.Wait()
		return fmt.Errorf("console: %w", err)
	}
	srv.routes(web.Handle, svc.Context().Done())
	live := newLive(index, srv)

	svc.Go("live", live.run)
	f := &feed{js: svc.Conn.JS, index: index, audit: audit, log: svc.Log}
	f.run(svc.Go, svc.MarkReady)
	svc.Go("audit", func(ctx context.Context) error { return audit.verifyLoop(ctx, cfg.VerifyEvery) })
	svc.Go("web", web.Serve)
	url := web.URL()
	svc.Log.InfoContext(ctx, "serving the console", "url", url)
	if cfg.OnConsoleListen != nil {
		cfg.OnConsoleListen(url)
	}
	return svc.Wait()
}
