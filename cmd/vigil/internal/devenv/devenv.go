// Package devenv runs Vigil's development environment in one process: an
// embedded nats-server with JetStream, every stream and bucket provisioned
// once (the services, which do not provision, find them as they need them),
// a shared telemetry setup with /healthz, /readyz and /metrics, and a list
// of components (the services, a simulated Azure, a simulated fleet) under a
// supervisor that stops them all when one fails, when the run's duration is
// over, or when its context ends (Ctrl-C).
//
//	env, err := devenv.Start(ctx, devenv.Config{Listen: "127.0.0.1:4222", DataDir: ".vigil/dev"})
//	if err != nil { ... }
//	err = env.Run(ctx, devenv.Component{Name: "ingest", Run: func(ctx context.Context, env *devenv.Env) error {
//		return ingest.Run(ctx, ingest.Config{Options: service.Options{NATS: bus.Config{URL: env.URL}, Logger: env.Logger.With("component", "ingest")}})
//	}})
package devenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// Defaults of Config.
const (
	DefaultListen          = "127.0.0.1:4222"
	DefaultDataDir         = ".vigil/dev"
	DefaultShutdownTimeout = 15 * time.Second
)

// Config describes a development environment.
type Config struct {
	// Listen is the NATS client address (host:port; port 0 picks a free
	// one). Default DefaultListen.
	Listen string
	// DataDir holds everything the run stores; the JetStream store is
	// <DataDir>/nats. Default DefaultDataDir. It survives the run, so a
	// second run sees the first one's events.
	DataDir string
	// OpsListen, when set, serves /healthz, /readyz and /metrics there.
	OpsListen string
	// Duration, when positive, ends the run after that long (exit 0).
	Duration time.Duration
	// ShutdownTimeout bounds how long components may take to stop once
	// asked to. Default DefaultShutdownTimeout.
	ShutdownTimeout time.Duration
	// Logger is the base logger; components get it with a "component"
	// attribute. Default: a JSON logger on stderr.
	Logger *slog.Logger
	// Telemetry is shared by every component, so that all of them appear
	// on one /metrics. Default: telemetry.Setup for service "vigil-dev",
	// installed as the OpenTelemetry globals, shut down by Run.
	Telemetry *telemetry.Telemetry
	// NATSLogging shows nats-server's own log on stderr.
	NATSLogging bool
	// Version is reported as service.version of the default telemetry.
	Version string
	// Auth runs NATS in operator mode with the identity (pkg/busauth) kept
	// in <DataDir>/auth, made there when missing: the environment's own
	// connection is the first administrator's, and components connect
	// with their own credentials (Env.BusConfig). Without it the server
	// is open.
	Auth bool
}

// Env is a running development environment; components read what they need
// from it.
type Env struct {
	// URL is the embedded NATS server's client URL.
	URL string
	// DataDir is the run's data directory (absolute); components keep
	// their state under it (for example <DataDir>/audit).
	DataDir string
	// NATS is the embedded server.
	NATS *natsembed.Server
	// NC and JS are a connection of the environment's own, for components
	// that need no connection of their own.
	NC *nats.Conn
	JS jetstream.JetStream
	// Logger is the base logger.
	Logger *slog.Logger
	// Telemetry provides tracers, meters and the /metrics registry.
	Telemetry *telemetry.Telemetry
	// Health collects readiness checks; components add theirs with
	// Health.AddReadiness before they start their work.
	Health *telemetry.Health
	// Auth is the identity when Config.Auth is set (nil otherwise);
	// AuthDir is where it is kept, <DataDir>/auth.
	Auth    *busauth.Set
	AuthDir string
	// Ops serves /healthz, /readyz and /metrics when Config.OpsListen is
	// set (nil otherwise); components may add routes to it.
	Ops *telemetry.Server

	cfg          Config
	ownTelemetry bool
	closeOnce    sync.Once
}

// Component is one part of the development environment. Run does the
// component's work until ctx ends and then returns nil; an error ends the
// whole environment. A component that has nothing more to do may return nil
// early; the others keep running.
type Component struct {
	Name string
	Run  func(ctx context.Context, env *Env) error
}

// ErrListen is returned when the NATS address cannot be used.
var ErrListen = errors.New("devenv: cannot listen")

// Start starts NATS, connects to it and provisions every stream and bucket.
// The caller must call Run or Close.
func Start(ctx context.Context, cfg Config) (*Env, error) {
	if cfg.Listen == "" {
		cfg.Listen = DefaultListen
	}
	if cfg.DataDir == "" {
		cfg.DataDir = DefaultDataDir
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = telemetry.Logger("vigil-dev", os.Stderr, slog.LevelInfo)
	}
	host, port, err := splitListen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	if port != 0 {
		// nats-server only logs a busy port and then never becomes ready;
		// say so at once instead.
		ln, err := net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("%w on %s (is another vigil dev or nats-server running?): %w", ErrListen, cfg.Listen, err)
		}
		_ = ln.Close()
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("devenv: data directory %s: %w", cfg.DataDir, err)
	}
	storeDir := filepath.Join(dataDir, "nats")
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return nil, fmt.Errorf("devenv: data directory: %w", err)
	}

	e := &Env{DataDir: dataDir, Logger: cfg.Logger, Telemetry: cfg.Telemetry, Health: telemetry.NewHealth(), cfg: cfg}
	if e.Telemetry == nil {
		t, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-dev", Version: cfg.Version, SetGlobal: true, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("devenv: %w", err)
		}
		e.Telemetry, e.ownTelemetry = t, true
	}

	ncfg := natsembed.Config{
		Name:     "vigil-dev",
		Host:     host,
		Port:     port,
		StoreDir: storeDir,
		Logging:  cfg.NATSLogging,
	}
	connOpts := []nats.Option{nats.Name("vigil-dev"), nats.MaxReconnects(-1)}
	if cfg.Auth {
		e.AuthDir = filepath.Join(dataDir, "auth")
		if e.Auth, err = loadOrInitAuth(e.AuthDir); err != nil {
			e.Close()
			return nil, err
		}
		ncfg.OperatorJWT, ncfg.SystemAccount, ncfg.AccountJWTs = e.Auth.OperatorJWT(), e.Auth.SystemAccount(), e.Auth.AccountJWTs()
		admin, err := e.Auth.Creds(busauth.Admin)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("devenv: %w", err)
		}
		connOpts = append(connOpts, nats.UserJWTAndSeed(admin.JWT, admin.Seed), nats.CustomInboxPrefix(busauth.InboxPrefix(busauth.Admin)))
	}
	srv, err := natsembed.Start(ncfg)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("devenv: start NATS on %s with store %s: %w", cfg.Listen, storeDir, err)
	}
	e.NATS, e.URL = srv, srv.URL()

	e.NC, err = nats.Connect(e.URL, connOpts...)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("devenv: connect to the embedded NATS at %s: %w", e.URL, err)
	}
	e.JS, err = jetstream.New(e.NC)
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("devenv: jetstream: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = events.Provision(pctx, e.JS, events.Topology{})
	cancel()
	if err != nil {
		e.Close()
		return nil, fmt.Errorf("devenv: provision streams and buckets: %w", err)
	}
	e.Health.AddReadiness("nats", telemetry.NATSConnected(e.NC))
	e.Health.AddReadiness("jetstream", telemetry.JetStreamReachable(e.JS))

	if cfg.OpsListen != "" {
		e.Ops, err = telemetry.Listen(cfg.OpsListen, e.Telemetry, e.Health)
		if err != nil {
			e.Close()
			return nil, fmt.Errorf("%w: health and metrics address: %w", ErrListen, err)
		}
	}
	cfg.Logger.Info("nats ready", "url", e.URL, "store", storeDir)
	return e, nil
}

// loadOrInitAuth loads the identity kept in dir, or makes one there when
// dir holds none. dir is private (0700, its secrets 0600).
func loadOrInitAuth(dir string) (*busauth.Set, error) {
	if _, err := os.Stat(filepath.Join(dir, busauth.FileOperatorJWT)); err == nil {
		set, err := busauth.LoadDir(dir)
		if err != nil {
			return nil, fmt.Errorf("devenv: the NATS identity in %s (remove the directory, or run without --keep, for a fresh one): %w", dir, err)
		}
		return set, nil
	}
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		return nil, fmt.Errorf("devenv: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devenv: %w", err)
	}
	if err := set.WriteDir(dir); err != nil {
		return nil, fmt.Errorf("devenv: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devenv: %w", err)
	}
	return set, nil
}

// BusConfig is how a component named name connects as principal p: the
// server's URL and, under auth, p's credentials and inbox prefix. Without
// auth it is the URL alone.
func (e *Env) BusConfig(name string, p busauth.Principal) (bus.Config, error) {
	cfg := bus.Config{URL: e.URL, Name: name, Logger: e.Logger.With("component", name)}
	if e.Auth == nil {
		return cfg, nil
	}
	c, err := e.Auth.Creds(p)
	if err != nil {
		return bus.Config{}, fmt.Errorf("devenv: credentials of %s: %w", p, err)
	}
	cfg.UserJWT, cfg.NKeySeed, cfg.InboxPrefix = c.JWT, c.Seed, busauth.InboxPrefix(p)
	return cfg, nil
}

// AdminCredsFile is the first administrator's credentials file under auth
// ("" without).
func (e *Env) AdminCredsFile() string {
	if e.Auth == nil {
		return ""
	}
	return filepath.Join(e.AuthDir, busauth.CredsFile(busauth.Admin))
}

func splitListen(listen string) (string, int, error) {
	host, p, err := net.SplitHostPort(listen)
	if err != nil {
		return "", 0, fmt.Errorf("%w: address %q: want host:port: %w", ErrListen, listen, err)
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("%w: address %q: port %q is not a number from 0 to 65535", ErrListen, listen, p)
	}
	if host == "" {
		host = "0.0.0.0"
	}
	return host, port, nil
}

// StoreDir is where JetStream keeps its data: <DataDir>/nats.
func (e *Env) StoreDir() string { return filepath.Join(e.DataDir, "nats") }

// Run runs the components until ctx ends, Config.Duration has passed, or
// one of them fails; then it stops the others (each gets
// Config.ShutdownTimeout to return), and finally NATS. It returns nil on a
// normal end and otherwise the first component error, named.
func (e *Env) Run(ctx context.Context, components ...Component) error {
	defer e.Close()
	if e.cfg.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.cfg.Duration)
		defer cancel()
	}
	if e.Ops != nil {
		ops := e.Ops
		components = append([]Component{{Name: "ops-http", Run: func(ctx context.Context, _ *Env) error { return ops.Serve(ctx) }}}, components...)
	}
	return supervise(ctx, e, components)
}

// supervise runs every component in its own goroutine until ctx ends or one
// fails; the first failure cancels the rest. Components that return nil
// early do not end the run.
func supervise(ctx context.Context, e *Env, components []Component) error {
	runCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	type result struct {
		name string
		err  error
	}
	results := make(chan result, len(components))
	for _, c := range components {
		e.Logger.Info("component starting", "component", c.Name)
		go func() { results <- result{c.Name, runComponent(runCtx, e, c)} }()
	}

	var first error
	pending := len(components)
	stop := runCtx.Done()
	var deadline <-chan time.Time // set once stopping
	for pending > 0 || deadline == nil {
		select {
		case r := <-results:
			pending--
			stopping := runCtx.Err() != nil
			if r.err == nil || stopping && (errors.Is(r.err, context.Canceled) || errors.Is(r.err, context.DeadlineExceeded)) {
				e.Logger.Info("component stopped", "component", r.name)
				continue
			}
			e.Logger.Error("component failed", "component", r.name, "err", r.err)
			if first == nil {
				first = fmt.Errorf("devenv: %s: %w", r.name, r.err)
				cancel(first)
			}
		case <-stop:
			stop = nil
			deadline = time.After(e.cfg.ShutdownTimeout)
			e.Logger.Info("stopping", "reason", stopReason(ctx, runCtx), "components", pending)
		case <-deadline:
			e.Logger.Error("shutdown timed out", "pending", pending, "timeout", e.cfg.ShutdownTimeout)
			if first == nil {
				first = fmt.Errorf("devenv: %d component(s) did not stop within %s", pending, e.cfg.ShutdownTimeout)
			}
			return first
		}
	}
	return first
}

func stopReason(parent, run context.Context) string {
	switch {
	case errors.Is(parent.Err(), context.DeadlineExceeded):
		return "duration reached"
	case parent.Err() != nil:
		return "interrupted"
	default:
		if c := context.Cause(run); c != nil {
			return c.Error()
		}
		return "all components stopped"
	}
}

// runComponent turns a panic into an error so that one component cannot
// take the environment down without the others being stopped.
func runComponent(ctx context.Context, e *Env, c Component) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	return c.Run(ctx, e)
}

// Close stops NATS and releases what Start set up; Run calls it. It is
// safe to call more than once.
func (e *Env) Close() {
	e.closeOnce.Do(func() {
		if e.Ops != nil {
			_ = e.Ops.Close()
		}
		if e.NC != nil {
			e.NC.Close()
		}
		if e.NATS != nil {
			e.NATS.Stop()
			e.Logger.Info("nats stopped")
		}
		if e.ownTelemetry {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := e.Telemetry.Shutdown(ctx); err != nil {
				e.Logger.Warn("telemetry shutdown", "err", err)
			}
			cancel()
		}
	})
}

// Banner writes how to reach the environment: the NATS URL, the ops
// endpoints and the command that tails the bus.
func (e *Env) Banner(w io.Writer) {
	fmt.Fprintf(w, "vigil dev: NATS with JetStream on %s (data in %s)\n", e.URL, e.StoreDir())
	if e.Ops != nil {
		fmt.Fprintf(w, "  health and metrics: %[1]s/healthz %[1]s/readyz %[1]s/metrics\n", e.Ops.URL())
	}
	tail := "--nats-url " + e.URL
	if e.Auth != nil {
		fmt.Fprintf(w, "  auth on: every service and simulated agent has its own credentials (each agent's earned by enrolling with its VM's evidence); identity in %s, administrator's credentials %s\n",
			e.AuthDir, e.AdminCredsFile())
		tail += " --nats-creds " + e.AdminCredsFile()
	} else {
		fmt.Fprintf(w, "  auth off (--no-auth): the server is open to anyone who reaches it\n")
	}
	fmt.Fprintf(w, "Watch the bus from another shell:\n")
	fmt.Fprintf(w, "  vigil events tail %s\n", tail)
	fmt.Fprintf(w, "  (from the repository: go run ./cmd/vigil events tail %s)\n", tail)
	fmt.Fprintf(w, "Stop with Ctrl-C.\n")
}
