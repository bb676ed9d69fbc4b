// Package service is the skeleton every Vigil service runs on: its bus
// connection (shared or its own, with its principal's inbox prefix), the
// check or provisioning of the streams and buckets, the operational
// listener (/healthz, /readyz, /metrics) with the same readiness checks
// everywhere, its telemetry and logger, and errgroup
// supervision of its tasks.
//
// A service does not provision the streams and buckets unless told to
// (Options.Provision): it checks them, and a missing or different one
// stops it with ErrTopology.
//
// A service's Config embeds Options; its Run reads as defaults, Start,
// wiring (Go for each long-running task), MarkReady and Wait:
//
//	func Run(ctx context.Context, cfg Config) error {
//		svc, err := service.Start(ctx, Name, cfg.Options)
//		if err != nil {
//			return err
//		}
//		svc.Go("consume", func(ctx context.Context) error { ... })
//		svc.MarkReady()
//		return svc.Wait()
//	}
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// Options is the part of every service's Config that is the same in all
// of them. Services embed it.
type Options struct {
	// Conn is an open connection to share (vigil dev runs every service on
	// one); the service does not close it. When nil, the service connects
	// with NATS, waiting for a server, and closes that connection when it
	// stops.
	Conn *bus.Conn
	// NATS says how to connect when Conn is nil (URL, credentials, TLS).
	// Its Name defaults to "vigil-" and the service's name. With user
	// credentials (a creds file, a user JWT or a JWT source: operator
	// mode) its InboxPrefix defaults to the inbox prefix of the service's
	// principal (busauth.InboxPrefix), the only one its permissions let
	// it hear; the agent, whose prefix names its VM, sets its own.
	NATS bus.Config

	// Topology is the layout of the streams and buckets. At start the
	// service checks that the ones it uses exist as events.Provision
	// would configure them (events.CheckTopology, with stream lookups
	// alone: in operator mode services may not create or update
	// streams), and fails with ErrTopology otherwise; with Provision it
	// provisions them itself instead. Provisioning is an administrator's
	// act (vigil provision); vigil dev and test harnesses set Provision.
	Topology  events.Topology
	Provision bool
	// CoreOnly says that the service uses core NATS alone (the in-guest
	// agent, whose credentials give it no JetStream): nothing is
	// provisioned or checked and there is no "jetstream" readiness check.
	CoreOnly bool

	// HTTPAddr, when set, serves /healthz, /readyz and /metrics (with
	// Telemetry) there; port 0 picks a free port. OnListen, when set, is
	// called with the bound address.
	HTTPAddr string
	OnListen func(addr string)
	// Health receives the service's checks; a process that serves several
	// services' checks itself passes its own. Default a new one.
	Health *telemetry.Health
	// Telemetry provides the tracer and meter providers and /metrics; the
	// OpenTelemetry globals are used when nil.
	Telemetry *telemetry.Telemetry
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Ready, when set, is called once the service does its work: when
	// its /readyz check turns ready.
	Ready func()
}

// Service is a running service: what its tasks share.
type Service struct {
	// Name is the service's name ("ingest", "keyguard", ...).
	Name string
	// Log is Options.Logger.
	Log *slog.Logger
	// Conn is the bus connection.
	Conn *bus.Conn
	// TracerProvider and MeterProvider come from Options.Telemetry, else
	// the OpenTelemetry globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	// Health holds the service's checks: readiness "nats" (connected),
	// "jetstream" (its API answers; not with CoreOnly) and one named for the service that
	// passes once MarkReady was called. Services add their own.
	Health *telemetry.Health

	opts      Options
	ownConn   bool
	ops       *telemetry.Server
	ready     atomic.Bool
	readyOnce atomic.Bool
	group     *errgroup.Group
	ctx       context.Context
	cancel    context.CancelFunc
}

// Start connects to the bus (or takes Options.Conn), checks or provisions
// the streams and buckets (Options.Topology), registers the readiness checks
// and opens the operational listener. Tasks started with Go run until ctx
// ends or one of them fails. An error from Start leaves nothing open.
func Start(ctx context.Context, name string, o Options) (*Service, error) {
	s := &Service{Name: name, Log: o.Logger, Health: o.Health, opts: o}
	if s.Log == nil {
		s.Log = slog.Default()
	}
	if s.Health == nil {
		s.Health = telemetry.NewHealth()
	}
	s.TracerProvider, s.MeterProvider = otel.GetTracerProvider(), otel.GetMeterProvider()
	if t := o.Telemetry; t != nil && t.TracerProvider != nil {
		s.TracerProvider = t.TracerProvider
	}
	if t := o.Telemetry; t != nil && t.MeterProvider != nil {
		s.MeterProvider = t.MeterProvider
	}
	if err := s.connect(ctx); err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		s.closeConn()
		return nil, err
	}
	return s, nil
}

func (s *Service) connect(ctx context.Context) error {
	if s.opts.Conn != nil {
		s.Conn = s.opts.Conn
		return nil
	}
	bc := s.opts.NATS
	if bc.Name == "" {
		bc.Name = "vigil-" + s.Name
	}
	if bc.Logger == nil {
		bc.Logger = s.Log
	}
	if p, ok := principal(s.Name); ok && bc.InboxPrefix == "" && userAuth(bc) {
		bc.InboxPrefix = busauth.InboxPrefix(p)
	}
	bc.WaitForServer = true
	bc.TracerProvider, bc.MeterProvider = s.TracerProvider, s.MeterProvider
	c, err := bus.Connect(ctx, bc)
	if err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	s.Conn, s.ownConn = c, true
	return nil
}

func (s *Service) start(ctx context.Context) error {
	if err := s.topology(ctx); err != nil {
		return err
	}
	s.Health.AddReadiness("nats", telemetry.NATSConnected(s.Conn.NC))
	if !s.opts.CoreOnly {
		s.Health.AddReadiness("jetstream", telemetry.JetStreamReachable(s.Conn.JS))
	}
	s.Health.AddReadiness(s.Name, func(context.Context) error {
		if !s.ready.Load() {
			return errors.New("starting")
		}
		return nil
	})
	if s.opts.HTTPAddr != "" {
		ops, err := telemetry.Listen(s.opts.HTTPAddr, s.opts.Telemetry, s.Health)
		if err != nil {
			return fmt.Errorf("%s: %w", s.Name, err)
		}
		s.ops = ops
		s.Log.InfoContext(ctx, "serving health and metrics", "url", ops.URL())
		if s.opts.OnListen != nil {
			s.opts.OnListen(ops.Addr())
		}
	}
	gctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	s.group, s.ctx = errgroup.WithContext(gctx)
	if s.ops != nil {
		s.Go("http", s.ops.Serve)
	}
	return nil
}

// ErrTopology is returned by Start when a stream or bucket the service
// uses is missing or configured otherwise than events.Provision would
// configure it (it is events.ErrTopology); service binaries exit with
// status 2 on it (svcmain).
var ErrTopology = events.ErrTopology

// topology provisions the streams and buckets (Options.Provision) or
// checks the ones the service uses: those its principal may look up
// (busauth.Streams), every one for a service that has no principal.
func (s *Service) topology(ctx context.Context) error {
	switch {
	case s.opts.CoreOnly:
		return nil
	case s.opts.Provision:
		if err := events.Provision(ctx, s.Conn.JS, s.opts.Topology); err != nil {
			return fmt.Errorf("%s: provision: %w", s.Name, err)
		}
		return nil
	}
	var only []string
	if p, ok := principal(s.Name); ok {
		only = busauth.Streams(p)
	}
	if err := events.CheckTopology(ctx, s.Conn.JS, s.opts.Topology, only...); err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	return nil
}

// principal is the bus principal of the service named name.
func principal(name string) (busauth.Principal, bool) {
	for _, p := range busauth.Principals() {
		if string(p) == name && p != busauth.Admin {
			return p, true
		}
	}
	return "", false
}

// userAuth reports whether c authenticates as a user of an operator's
// account (a user JWT), where every principal has its own inbox prefix.
func userAuth(c bus.Config) bool {
	return c.CredsFile != "" || c.UserJWT != "" || c.JWTSource != nil
}

// Context is the context of the service's tasks: it ends when the
// context given to Start ends or a task fails.
func (s *Service) Context() context.Context { return s.ctx }

// Handle adds a route to the operational listener (for example the
// auditor's read-only log); without a listener it does nothing.
func (s *Service) Handle(pattern string, h http.Handler) {
	if s.ops != nil {
		s.ops.Handle(pattern, h)
	}
}

// Go runs task until the service's context ends. A task returns nil when
// that context ends; an error from it stops the service: the context of
// every other task ends and Wait returns the error, named after task.
func (s *Service) Go(task string, f func(ctx context.Context) error) {
	s.group.Go(func() error {
		err := f(s.ctx)
		if err == nil || (s.ctx.Err() != nil && errors.Is(err, s.ctx.Err())) {
			return nil
		}
		return fmt.Errorf("%s: %s: %w", s.Name, task, err)
	})
}

// MarkReady says that the service does its work: its readiness check
// passes from now on, and Options.Ready is called (once).
func (s *Service) MarkReady() {
	s.ready.Store(true)
	if s.readyOnce.CompareAndSwap(false, true) && s.opts.Ready != nil {
		s.opts.Ready()
	}
}

// MarkUnready says that the service does not do its work for now (the
// auditor while it waits as a standby): its readiness check fails until
// MarkReady.
func (s *Service) MarkUnready() { s.ready.Store(false) }

// Stop ends the service's context, as a failure of a task would.
func (s *Service) Stop() { s.cancel() }

// Wait waits until the service's context ends (the context given to
// Start ends, a task fails or Stop is called) and every task has returned,
// then closes the connection if the service opened it. It returns the
// first task's error, or nil after a clean shutdown.
func (s *Service) Wait() error {
	<-s.ctx.Done()
	err := s.group.Wait()
	s.cancel()
	s.ready.Store(false)
	s.closeConn()
	return err
}

func (s *Service) closeConn() {
	if s.ownConn {
		_ = s.Conn.Close()
	}
}
