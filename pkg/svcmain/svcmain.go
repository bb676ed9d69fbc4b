// Package svcmain is the shared skeleton of Vigil's service binaries: flags
// that fall back to VIGIL_* environment variables (and name them in their
// usage), the common NATS, replica and log flags, and a Main that runs a
// service with a signal-aware context, a JSON logger and telemetry.
package svcmain

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// ErrUsage marks errors in the command line or the environment; Main exits
// with status 2 on them.
var ErrUsage = errors.New("usage")

// EnvName is the environment variable a flag falls back to: -foo-bar reads
// VIGIL_FOO_BAR.
func EnvName(flagName string) string {
	return "VIGIL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Flags is a flag set whose flags fall back to their VIGIL_* environment
// variable when not given on the command line. A value from the
// environment is parsed like one from the command line, so a bad value is a
// usage error naming the variable.
type Flags struct {
	*flag.FlagSet
	checks   []func() error
	args     int // positional arguments expected (ExpectArgs)
	synopsis string
}

// ExpectArgs makes Parse require exactly n positional arguments, described
// by synopsis in the usage error (for example "KEYNAME").
func (f *Flags) ExpectArgs(n int, synopsis string) { f.args, f.synopsis = n, synopsis }

// NewFlags returns the flag set of the program name.
func NewFlags(name string) *Flags {
	return &Flags{FlagSet: flag.NewFlagSet(name, flag.ContinueOnError)}
}

// Check adds a validation run by Parse; its error becomes a usage error.
func (f *Flags) Check(check func() error) { f.checks = append(f.checks, check) }

// Parse parses args, then fills every flag not given there from its
// environment variable, then runs the checks. Positional arguments are
// refused unless ExpectArgs said how many there are.
func (f *Flags) Parse(args []string) error {
	if err := f.FlagSet.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	switch {
	case f.args == 0 && f.NArg() > 0:
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, f.Arg(0))
	case f.NArg() != f.args:
		return fmt.Errorf("%w: want %s after the flags", ErrUsage, f.synopsis)
	}
	given := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { given[fl.Name] = true })
	var errs []error
	f.VisitAll(func(fl *flag.Flag) {
		if given[fl.Name] {
			return
		}
		if v, ok := os.LookupEnv(EnvName(fl.Name)); ok {
			if err := f.Set(fl.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", EnvName(fl.Name), v, err))
			}
		}
	})
	for _, check := range f.checks {
		if err := check(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", ErrUsage, err)
	}
	return nil
}

func usage(u, name string) string { return u + " (env " + EnvName(name) + ")" }

// String defines a string flag.
func (f *Flags) String(name, def, u string) *string {
	return f.FlagSet.String(name, def, usage(u, name))
}

// Bool defines a boolean flag (true, false, 1, 0).
func (f *Flags) Bool(name string, def bool, u string) *bool {
	return f.FlagSet.Bool(name, def, usage(u, name))
}

// Int defines an integer flag.
func (f *Flags) Int(name string, def int, u string) *int {
	return f.FlagSet.Int(name, def, usage(u, name))
}

// Float defines a floating-point flag.
func (f *Flags) Float(name string, def float64, u string) *float64 {
	return f.FlagSet.Float64(name, def, usage(u, name))
}

// Duration defines a duration flag (Go syntax: 30s, 5m, 1h30m).
func (f *Flags) Duration(name string, def time.Duration, u string) *time.Duration {
	return f.FlagSet.Duration(name, def, usage(u, name))
}

// NATS defines the connection flags -nats-url, -nats-creds, -nats-ca,
// -nats-cert and -nats-key; the returned function gives the bus
// configuration after Parse. The vigil CLI has the same flags (with the
// same usage text), written --nats-url and so on.
func (f *Flags) NATS(client string) func() bus.Config {
	url := f.String("nats-url", bus.DefaultURL, "NATS server URL, or a comma-separated list")
	creds := f.String("nats-creds", "", "NATS credentials file; only its owner may read it")
	ca := f.String("nats-ca", "", "CA certificate (PEM) to trust for NATS TLS")
	cert := f.String("nats-cert", "", "client certificate (PEM) for NATS TLS, with the client key")
	key := f.String("nats-key", "", "client key (PEM) for NATS TLS, with the client certificate; only its owner may read it")
	return func() bus.Config {
		return bus.Config{URL: *url, Name: client, CredsFile: *creds, TLSCAFile: *ca, TLSCertFile: *cert, TLSKeyFile: *key}
	}
}

// Replicas defines -replicas; the returned function gives the topology
// after Parse (which has checked that it is 1 or 3).
func (f *Flags) Replicas() func() events.Topology {
	n := f.Int("replicas", 1, "stream and bucket replicas (3 on a cluster)")
	f.Check(func() error {
		if *n != 1 && *n != 3 {
			return fmt.Errorf("-replicas %d: must be 1 or 3", *n)
		}
		return nil
	})
	return func() events.Topology { return events.Topology{Replicas: *n} }
}

// Service defines the flags every service shares: the NATS connection
// flags (see NATS), -replicas and -http, the operational listener's
// address (/healthz, /readyz, /metrics; "" turns it off) with default
// httpDefault. The returned function gives the service's Options after
// Parse, with the runtime's logger and telemetry.
func (f *Flags) Service(name, httpDefault string) func(Runtime) service.Options {
	nats := f.NATS(name)
	topology := f.Replicas()
	httpAddr := f.String("http", httpDefault, `listen address of /healthz, /readyz and /metrics ("" turns them off)`)
	return func(rt Runtime) service.Options {
		return service.Options{NATS: nats(), Topology: topology(), HTTPAddr: *httpAddr, Logger: rt.Logger, Telemetry: rt.Telemetry}
	}
}

// Runtime is what Main gives a service: its logger and telemetry.
type Runtime struct {
	Logger    *slog.Logger
	Telemetry *telemetry.Telemetry
}

// RunFunc runs a service until ctx ends (SIGINT or SIGTERM).
type RunFunc func(ctx context.Context, rt Runtime) error

// Main is the main function of the service binary name: define adds the
// service's flags and returns what runs it. Main adds -log-level, parses
// the command line and environment, sets up a JSON logger on stderr and
// telemetry (OTEL_* variables), runs the service and exits: 0 after a clean
// stop, 2 on a usage error (ErrUsage) or streams and buckets not provisioned
// as the service needs them (service.ErrTopology: run vigil provision), 1 on
// any other error. Services never provision.
func Main(name string, define func(*Flags) RunFunc) {
	os.Exit(Run(context.Background(), name, os.Args[1:], os.Stderr, define))
}

// Run is Main without the exit: it runs until ctx ends (or SIGINT or
// SIGTERM arrives) and returns the exit status. Tests use it.
func Run(ctx context.Context, name string, args []string, stderr io.Writer, define func(*Flags) RunFunc) int {
	f := NewFlags(name)
	f.SetOutput(stderr)
	level := f.String("log-level", "info", "log level: debug, info, warn, error")
	runFn := define(f)
	fail := func(err error) int {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		if errors.Is(err, ErrUsage) || errors.Is(err, service.ErrTopology) {
			return 2
		}
		return 1
	}
	if err := f.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return fail(err)
	}
	lvl, err := telemetry.ParseLevel(*level)
	if err != nil {
		return fail(fmt.Errorf("%w: -log-level: %w", ErrUsage, err))
	}
	log := telemetry.Logger(name, stderr, lvl)
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: name, SetGlobal: true, Logger: log})
	if err != nil {
		return fail(fmt.Errorf("%w: telemetry: %w", ErrUsage, err))
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	// A service stopped by a signal while it waited (for NATS, say)
	// stopped cleanly.
	if err := runFn(ctx, Runtime{Logger: log, Telemetry: tel}); err != nil && !(ctx.Err() != nil && errors.Is(err, context.Canceled)) {
		return fail(err)
	}
	return 0
}

// ReadFile reads a file named by a flag, as a usage error when it cannot.
func ReadFile(flagName, path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: -%s: %w", ErrUsage, flagName, err)
	}
	return b, nil
}
