package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devenv"
	"github.com/vigil-cc/vigil/cmd/vigil/internal/devview"
	"github.com/vigil-cc/vigil/cmd/vigil/internal/fleet"
	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/agent"
	attestworker "github.com/vigil-cc/vigil/services/attest-worker"
	"github.com/vigil-cc/vigil/services/auditor"
	"github.com/vigil-cc/vigil/services/console"
	"github.com/vigil-cc/vigil/services/ingest"
	ingestarm "github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// devOptions are the flags of `vigil dev`.
type devOptions struct {
	listen      string
	dataDir     string
	opsListen   string
	duration    time.Duration
	logLevel    string
	logFile     string
	natsLogging bool
	keep        bool
	busOnly     bool
	noAuth      bool

	httpAddr      string
	webhookSecret string
	vms           int
	scenario      string
	tamperAfter   time.Duration
	interval      time.Duration
	grace         time.Duration
	summary       string
	profile       string
	console       string

	alertWebhook       string
	alertWebhookSecret string
}

// fleetKey is the secret every simulated VM is granted in `vigil dev`.
const fleetKey = "fleet-secret"

func newDevCmd() *cobra.Command {
	o := &devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run the whole pipeline in one process on an embedded NATS server with a simulated fleet",
		Long: `Run Vigil in one process: an embedded NATS server with JetStream, ingest, attest-worker,
keyguard, auditor and notifier, a simulated Azure (ARM API and Event Grid) and a simulated fleet of
Confidential VMs (SEV-SNP and TDX). With --scenario tamper (the default) a few VMs go bad
partway: watch detection, revocation, alert and audit entry happen. --alert-webhook URL
subscribes a webhook (vigil alerts receive, say) to the alerts.

Auth is on: NATS runs in operator mode with an identity kept in <data>/auth, and each
service and each simulated agent connects with its own credentials (each agent earns its
own from keyguard by enrolling with its VM's evidence, and connects inside this process's
NATS server); the administrator's credentials file is
<data>/auth/creds/admin.creds. --no-auth runs an open server for debugging, and only when
every listener is loopback.

Each run starts from a clean state unless --keep is given; the audit signer key and the
keyguard master key in --data are kept across runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", flagEnv("VIGIL_DEV_LISTEN", devenv.DefaultListen), "NATS client address host:port (port 0 picks a free one) [VIGIL_DEV_LISTEN]")
	f.StringVar(&o.dataDir, "data", flagEnv("VIGIL_DEV_DATA", "./"+devenv.DefaultDataDir), "data directory: NATS store, audit log and keys, logs [VIGIL_DEV_DATA]")
	f.StringVar(&o.opsListen, "ops-listen", flagEnv("VIGIL_DEV_OPS_LISTEN", "127.0.0.1:9464"), `address for /healthz, /readyz and /metrics; "" turns them off [VIGIL_DEV_OPS_LISTEN]`)
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	f.StringVar(&o.logLevel, "log-level", flagEnv("VIGIL_LOG_LEVEL", "info"), "log level: debug, info, warn, error [VIGIL_LOG_LEVEL]")
	f.StringVar(&o.logFile, "log-file", "", `where the services' JSON logs go (default <data>/dev.log; "-" for stderr)`)
	f.BoolVar(&o.natsLogging, "nats-log", false, "show the NATS server's own log")
	f.BoolVar(&o.keep, "keep", false, "keep the previous run's NATS state and audit log instead of starting clean")
	f.BoolVar(&o.busOnly, "bus-only", false, "run only NATS (streams and buckets provisioned), for services started on their own")
	f.BoolVar(&o.noAuth, "no-auth", false, "run NATS without auth, every component on one connection (debugging; refused unless every listener is loopback)")
	f.StringVar(&o.httpAddr, "http", "127.0.0.1:8080", "ingest's HTTP address (Event Grid webhook at /eventgrid)")
	f.StringVar(&o.webhookSecret, "webhook-secret", "", "require this shared secret on the webhook (off by default in dev)")
	f.IntVar(&o.vms, "vms", 20, "number of simulated Confidential VMs (every third is TDX)")
	f.StringVar(&o.scenario, "scenario", fleet.ScenarioTamper, "tamper: a few VMs go bad partway; none: a healthy fleet only")
	f.DurationVar(&o.tamperAfter, "tamper-after", 15*time.Second, "when the tamper scenario spoils VMs")
	f.DurationVar(&o.interval, "interval", 10*time.Second, "re-attestation interval per VM (production default 5m)")
	f.DurationVar(&o.grace, "grace", 15*time.Second, "how long a VM may go without valid evidence before it is stale")
	f.StringVar(&o.summary, "summary", "", "write a JSON summary of the run to this file")
	f.StringVar(&o.profile, "profile", "", "write CPU, blocking, mutex and heap profiles of the run into this directory (cpu.pprof, block.pprof, mutex.pprof, heap.pprof)")
	f.StringVar(&o.console, "console", console.DefaultAddr, `the fleet console's address, loopback only ("" turns it off)`)
	f.StringVar(&o.alertWebhook, "alert-webhook", "", "subscribe this webhook (CloudEvents, signed) to every alert at start, e.g. the URL of vigil alerts receive")
	f.StringVar(&o.alertWebhookSecret, "alert-webhook-secret", "", "the --alert-webhook subscription's whsec_ secret (default "+devAlertWebhookSecret+")")
	return cmd
}

func runDev(cmd *cobra.Command, o *devOptions) error {
	if o.duration < 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--duration %s: must not be negative", o.duration)}
	}
	if o.vms <= 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--vms %d: must be positive", o.vms)}
	}
	if o.scenario != fleet.ScenarioTamper && o.scenario != fleet.ScenarioNone {
		return &exitError{code: 2, msg: fmt.Sprintf("--scenario %q: want tamper or none", o.scenario)}
	}
	if o.console != "" {
		if err := checkLoopback(map[string]string{"--console": o.console}); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
	}
	if o.noAuth {
		if err := checkLoopback(map[string]string{"--listen": o.listen, "--http": o.httpAddr, "--ops-listen": o.opsListen}); err != nil {
			return &exitError{code: 2, msg: "--no-auth: " + err.Error()}
		}
	}
	level, err := telemetry.ParseLevel(o.logLevel)
	if err != nil {
		return &exitError{code: 2, msg: "--log-level: " + err.Error()}
	}
	ctx := cmd.Context()
	out := cmd.OutOrStdout()
	if need := o.tamperAfter + o.interval + o.grace; o.scenario == fleet.ScenarioTamper && o.duration > 0 && o.duration < need {
		fmt.Fprintf(out, "note: --duration %s is shorter than the tamper scenario needs (about %s: VMs are spoiled after --tamper-after %s, "+
			"noticed within an --interval of %s, and a VM whose agent went silent is stale, so revoked, after the --grace of %s); "+
			"the outcome check will find tampered VMs not revoked yet\n", o.duration, need, o.tamperAfter, o.interval, o.grace)
	}
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return err
	}
	if !o.keep {
		// A clean pipeline: the NATS state and the audit log that indexes
		// it go together. Keys survive.
		// So does the NATS identity, which owns the JetStream store.
		for _, d := range []string{filepath.Join(dataDir, "nats"), filepath.Join(dataDir, "audit", "log"), filepath.Join(dataDir, "auth")} {
			if err := os.RemoveAll(d); err != nil {
				return fmt.Errorf("clean %s: %w", d, err)
			}
		}
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return err
	}
	logOut, closeLog, err := openDevLog(cmd.ErrOrStderr(), o.logFile, dataDir)
	if err != nil {
		return err
	}
	defer closeLog()
	log := telemetry.Logger("vigil-dev", logOut, level)
	auditor.RouteTesseraLogs(log.With("component", "tessera"))

	if o.profile != "" {
		stop, err := startProfiles(o.profile)
		if err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		defer func() {
			if err := stop(); err != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "vigil: %v\n", err)
			}
		}()
	}

	env, err := devenv.Start(ctx, devenv.Config{
		Listen:      o.listen,
		DataDir:     dataDir,
		OpsListen:   o.opsListen,
		Duration:    o.duration,
		Logger:      log,
		NATSLogging: o.natsLogging,
		Version:     version,
		Auth:        !o.noAuth,
	})
	if err != nil {
		if errors.Is(err, devenv.ErrListen) {
			return &exitError{code: 2, msg: err.Error()}
		}
		return err
	}
	if o.busOnly {
		env.Banner(out)
		return env.Run(ctx)
	}
	if o.busOnly && env.Auth != nil {
		env.Banner(out)
		fmt.Fprintf(out, "Credentials for services started on their own: %s (one file per principal; give each its own with --nats-creds)\n",
			filepath.Join(env.AuthDir, "creds"))
		return env.Run(ctx)
	}
	d, err := newDevRun(ctx, env, o, dataDir, out)
	if err != nil {
		env.Close()
		return err
	}
	printConsoleURL(out, o.console)
	env.Banner(out)
	fmt.Fprintf(out, "Simulated fleet: %d Confidential VMs (SEV-SNP and TDX), scenario %q; Event Grid webhook on %s\n", o.vms, o.scenario, o.httpAddr)
	if o.logFile != "-" {
		fmt.Fprintf(out, "Service logs: %s\n", d.logPath(o.logFile))
	}
	fmt.Fprintln(out)
	runErr := env.Run(ctx, d.components()...)
	return d.finish(out, runErr)
}

// devRun is one `vigil dev` run: the environment, the fleet and the view.
type devRun struct {
	env       *devenv.Env
	o         *devOptions
	dataDir   string
	conn      *bus.Conn
	fleet     *fleet.Fleet
	collector *devview.Collector
	started   time.Time
	auditDir  string
	out       io.Writer
	// webhook receives ingest's webhook URL once it listens.
	webhook chan string
	// keyguardReady is closed once keyguard consumes events: its consumer
	// starts from new events, so the fleet waits for it. enrollURL, under
	// auth, is keyguard's enrollment API, set before keyguardReady closes.
	keyguardReady chan struct{}
	enrollURL     string
}

func newDevRun(ctx context.Context, env *devenv.Env, o *devOptions, dataDir string, out io.Writer) (*devRun, error) {
	// Without auth every component shares one connection; under auth each
	// has its own.
	var conn *bus.Conn
	if env.Auth == nil {
		var err error
		if conn, err = bus.Connect(ctx, bus.Config{URL: env.URL, Name: "vigil-dev", Logger: env.Logger}); err != nil {
			return nil, err
		}
	}
	d := &devRun{env: env, o: o, dataDir: dataDir, conn: conn, started: time.Now(), auditDir: filepath.Join(dataDir, "audit"), out: out, webhook: make(chan string, 1), keyguardReady: make(chan struct{})}
	var connect func(context.Context, string, agent.Source) (*bus.Conn, error)
	if env.Auth != nil {
		// Each simulated agent earns its credentials from keyguard, whose
		// enrollment API listens before keyguard is ready and the fleet
		// starts.
		// Each connects inside the embedded server's process, as its own
		// principal: a socket per agent would need two open files per VM.
		connect = enrollingAgents(bus.Config{URL: env.URL, InProcess: env.NATS.Server}, func() string { return d.enrollURL }, env.Logger)
	}
	onFault, onLifecycle, onConfig := scenarioNotes(&d.collector)
	var err error
	d.fleet, err = fleet.New(fleet.Config{
		VMs: o.vms, Scenario: o.scenario, TamperAfter: o.tamperAfter,
		Logger:  env.Logger.With("component", "fleet"),
		OnFault: onFault, OnLifecycle: onLifecycle, OnConfig: onConfig,
		Connect: connect,
	})
	if err != nil {
		d.closeConn()
		return nil, err
	}
	names := map[string]string{}
	for _, v := range d.fleet.VMs() {
		names[v.Key] = v.Name
		names[v.ResourceID] = v.Name
	}
	d.collector = devview.NewCollector(d.started.Add(-time.Second), func(vm string) string {
		if n, ok := names[vm]; ok {
			return n
		}
		return vm
	})
	return d, nil
}

func (d *devRun) closeConn() {
	if d.conn != nil {
		d.conn.Close()
	}
}

// enrollConfig is keyguard's enrollment under auth: agents enroll on a
// loopback port of its choosing, every simulated agent from the same
// address (hence the generous per-source rate), and their credentials
// are revoked through the identity's revoker. Without auth, none.
func (d *devRun) enrollConfig(env *devenv.Env) (keyguard.EnrollConfig, error) {
	if env.Auth == nil {
		return keyguard.EnrollConfig{}, nil
	}
	rev, err := env.Auth.Revoker()
	if err != nil {
		return keyguard.EnrollConfig{}, err
	}
	return keyguard.EnrollConfig{
		Issuer: env.Auth.AgentIssuer(), Addr: "127.0.0.1:0",
		OnListen:   func(addr string) { d.enrollURL = "http://" + addr },
		SourceRate: 1000, SourceBurst: 1000,
		Revoker: rev, RevokerNATS: bus.Config{URL: env.URL},
	}, nil
}

// checkLoopback refuses any listener (flag name to host:port; "" is off)
// that is not bound to a loopback address.
func checkLoopback(listeners map[string]string) error {
	for _, flag := range []string{"--listen", "--http", "--ops-listen", "--console"} {
		addr, ok := listeners[flag]
		if !ok || addr == "" {
			continue
		}
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return fmt.Errorf("%s %q: %w", flag, addr, err)
		}
		if host == "localhost" {
			continue
		}
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("%s %s is not a loopback address: without auth anyone who reaches it could use the bus; drop --no-auth or listen on 127.0.0.1", flag, addr)
		}
	}
	return nil
}

// options are the service options of a component running as principal
// p: under auth a connection of its own with p's credentials, otherwise
// the shared connection.
func (d *devRun) options(env *devenv.Env, name string, p busauth.Principal) (service.Options, error) {
	o := service.Options{Telemetry: env.Telemetry, Logger: env.Logger.With("component", name)}
	if d.conn != nil {
		o.Conn = d.conn
		return o, nil
	}
	cfg, err := env.BusConfig(name, p)
	if err != nil {
		return o, err
	}
	o.NATS = cfg
	return o, nil
}

func (d *devRun) logPath(flag string) string {
	if flag != "" {
		return flag
	}
	return filepath.Join(d.dataDir, "dev.log")
}

// openDevLog opens where the services' logs go: a file under the data
// directory by default, so that the live view stays readable.
func openDevLog(stderr io.Writer, flag, dataDir string) (io.Writer, func(), error) {
	if flag == "-" {
		return stderr, func() {}, nil
	}
	path := flag
	if path == "" {
		path = filepath.Join(dataDir, "dev.log")
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open log file: %w", err)
	}
	return f, func() { f.Close() }, nil
}

func (d *devRun) components() []devenv.Component {
	o, auth := d.o, d.fleet.Authority()
	verifier := evidence.Config{Offline: true, TestRoots: auth.TrustRoots()}
	var grants []keyguard.GrantSpec
	for _, v := range d.fleet.VMs() {
		grants = append(grants, keyguard.GrantSpec{VM: v.Key, VMID: v.VMID, Key: fleetKey})
	}
	return []devenv.Component{
		{Name: "auditor", Run: func(ctx context.Context, env *devenv.Env) error {
			opts, err := d.options(env, "auditor", busauth.Auditor)
			if err != nil {
				return err
			}
			return auditor.Run(ctx, auditor.Config{
				LogDir:          filepath.Join(d.auditDir, "log"),
				SignerKeyFile:   filepath.Join(d.auditDir, "signer.key"),
				VerifierKeyFile: filepath.Join(d.auditDir, "signer.pub"),
				GenerateKeys:    true,
				Options:         opts,
			})
		}},
		{Name: "keyguard", Run: func(ctx context.Context, env *devenv.Env) error {
			if err := os.MkdirAll(filepath.Join(d.dataDir, "keyguard"), 0o700); err != nil {
				return err
			}
			master, err := secrets.EnsureMasterKeyFile(filepath.Join(d.dataDir, "keyguard", "master.key"))
			if err != nil {
				return err
			}
			opts, err := d.options(env, "keyguard", busauth.Keyguard)
			if err != nil {
				return err
			}
			opts.Ready = sync.OnceFunc(func() { close(d.keyguardReady) })
			enroll, err := d.enrollConfig(env)
			if err != nil {
				return err
			}
			return keyguard.Run(ctx, keyguard.Config{
				Options:       opts,
				MasterKey:     master,
				ImportSecrets: map[string][]byte{fleetKey: []byte("the fleet's disk encryption key (demo)")},
				Grants:        grants,
				Evidence:      keyguard.EvidenceConfig{Verifier: verifier, Policy: auth.Policy(), Build: "vigil " + version},
				Enroll:        enroll,
			})
		}},
		{Name: "attest-worker", Run: func(ctx context.Context, env *devenv.Env) error {
			opts, err := d.options(env, "attest-worker", busauth.AttestWorker)
			if err != nil {
				return err
			}
			opts.Health = env.Health
			return attestworker.Run(ctx, attestworker.Config{
				Options:  opts,
				Name:     "dev-worker",
				Timing:   attestworker.Timing{Interval: o.interval, Grace: o.grace, RetryBase: time.Second, RetryMax: o.interval / 2},
				Policy:   auth.Policy(),
				Verifier: verifier,
			})
		}},
		{Name: "ingest", Run: func(ctx context.Context, env *devenv.Env) error {
			var secrets []string
			if o.webhookSecret != "" {
				secrets = []string{o.webhookSecret}
			}
			opts, err := d.options(env, "ingest", busauth.Ingest)
			if err != nil {
				return err
			}
			opts.Health = env.Health
			return ingest.Run(ctx, ingest.Config{
				Options:     opts,
				WebhookAddr: o.httpAddr,
				OnWebhookListen: func(addr string) {
					u := url.URL{Scheme: "http", Host: addr, Path: "/eventgrid"}
					if o.webhookSecret != "" {
						u.RawQuery = url.Values{"secret": {o.webhookSecret}}.Encode()
					}
					d.webhook <- u.String()
				},
				WebhookSecrets:    secrets,
				ARM:               ingestarm.Config{Credential: fleet.StaticCredential{}, Endpoint: d.fleet.ARMEndpoint()},
				Subscriptions:     d.fleet.Subscriptions(),
				ReconcileInterval: time.Minute,
			})
		}},
		{Name: "fleet", Run: func(ctx context.Context, env *devenv.Env) error {
			select {
			case u := <-d.webhook:
				d.fleet.SetWebhook(u)
			case <-ctx.Done():
				return nil
			}
			select {
			case <-d.keyguardReady:
			case <-ctx.Done():
				return nil
			}
			return d.fleet.Run(ctx, d.conn)
		}},
		d.consoleComponent(),
		d.notifierComponent(),
		{Name: "view", Run: func(ctx context.Context, env *devenv.Env) error {
			shown := make(chan struct{})
			go func() {
				defer close(shown)
				devview.Show(ctx, d.out, d.collector, devview.IsTerminal(d.out), 5*time.Second)
			}()
			js := env.JS
			if env.Auth != nil {
				// The view reads as the console does.
				cfg, err := env.BusConfig("view", busauth.Console)
				if err != nil {
					return err
				}
				conn, err := bus.Connect(ctx, cfg)
				if err != nil {
					return err
				}
				defer conn.Close()
				js = conn.JS
			}
			err := d.collector.Run(ctx, js)
			<-shown
			return err
		}},
	}
}

func (d *devRun) finish(out io.Writer, runErr error) error {
	defer d.closeConn()
	s := summarizeRun(d.collector, d.fleet, d.started)
	s.DataDir = d.dataDir
	s.Audit.Log = filepath.Join(d.auditDir, "log")
	s.Audit.PublicKey = filepath.Join(d.auditDir, "signer.pub")
	if err := writeSummary(out, d.o.summary, s); err != nil {
		return err
	}
	if err := s.Check(); err != nil && d.o.duration > 0 {
		fmt.Fprintf(out, "outcome: %v\n", err)
	}
	fmt.Fprintf(out, "Audit log: %s\nSigner public key: %s\nCheck the log offline:\n  vigil audit verify --log %s --key %s\n",
		s.Audit.Log, s.Audit.PublicKey, s.Audit.Log, s.Audit.PublicKey)
	return runErr
}
