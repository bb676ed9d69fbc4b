package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devview"
	"github.com/vigil-cc/vigil/cmd/vigil/internal/fleet"
	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/services/keyguard"
)

func newSimCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Simulated Azure and fleet for Vigil services running as separate processes",
		Long: `A simulated Azure (ARM compute API, Event Grid pushing VM lifecycle events to ingest's
webhook) and a simulated fleet of Confidential VMs whose agents answer challenges on NATS.
"vigil dev" runs the same simulation in one process with every service; "vigil sim run"
drives services that run on their own (docker compose, the multi-process test).

The simulated hardware vendors derive every key from a seed, so "vigil sim export" writes
the roots and policy that attest-worker and keyguard must be given to accept the fleet.`,
	}
	cmd.AddCommand(newSimRunCmd(), newSimExportCmd())
	return cmd
}

type simRunOptions struct {
	conn        keyguardConn
	webhook     string
	armListen   string
	vms         int
	scenario    string
	tamperAfter time.Duration
	duration    time.Duration
	summary     string
	check       bool
	grantKey    string
	enrollURL   string
}

func newSimRunCmd() *cobra.Command {
	o := &simRunOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the simulated Azure and fleet against running Vigil services",
		Args:  cobra.NoArgs,
		RunE:  func(cmd *cobra.Command, _ []string) error { return runSim(cmd, o) },
	}
	o.conn.flags(cmd)
	f := cmd.Flags()
	f.StringVar(&o.webhook, "webhook", flagEnv("VIGIL_SIM_WEBHOOK", "http://127.0.0.1:8080/eventgrid"), "ingest's Event Grid webhook URL, with ?secret=... [VIGIL_SIM_WEBHOOK]")
	f.StringVar(&o.armListen, "arm-listen", flagEnv("VIGIL_SIM_ARM_LISTEN", "127.0.0.1:8090"), "address of the simulated ARM API (point ingest's --arm-endpoint at it) [VIGIL_SIM_ARM_LISTEN]")
	f.IntVar(&o.vms, "vms", 20, "number of simulated Confidential VMs (every third is TDX)")
	f.StringVar(&o.scenario, "scenario", flagEnv("VIGIL_SIM_SCENARIO", fleet.ScenarioTamper), "tamper: a few VMs go bad partway; none: healthy only [VIGIL_SIM_SCENARIO]")
	f.DurationVar(&o.tamperAfter, "tamper-after", 15*time.Second, "when the tamper scenario spoils VMs")
	f.DurationVar(&o.duration, "for", 0, "stop after this long (0: until interrupted)")
	f.StringVar(&o.summary, "summary", "", "write a JSON summary of the run to this file")
	f.BoolVar(&o.check, "check", false, "exit 1 unless every healthy VM ends trusted, every tampered or deleted VM revoked and no healthy VM revoked")
	f.StringVar(&o.grantKey, "grant", fleetKey, `grant every VM this key at keyguard ("" to grant nothing)`)
	f.StringVar(&o.enrollURL, "enroll-url", flagEnv("VIGIL_ENROLL_URL", ""), "keyguard's enrollment API: each simulated agent enrolls there and connects with its own credentials (required when NATS runs with auth) [VIGIL_ENROLL_URL]")
	return cmd
}

func runSim(cmd *cobra.Command, o *simRunOptions) error {
	ctx := cmd.Context()
	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	out := cmd.OutOrStdout()
	conn, err := o.conn.connect(ctx)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	defer conn.Close()
	started := time.Now()
	var col *devview.Collector
	onFault, onLifecycle, onConfig := scenarioNotes(&col)
	fc := fleet.Config{
		VMs: o.vms, Scenario: o.scenario, TamperAfter: o.tamperAfter, WebhookURL: o.webhook, ARMListen: o.armListen,
		OnFault: onFault, OnLifecycle: onLifecycle, OnConfig: onConfig,
	}
	if o.enrollURL != "" {
		why := fmt.Sprintf("--vms %d with --enroll-url (each simulated agent has its own NATS connection)", o.vms)
		if err := ensureFileLimit(fileLimitBase+uint64(o.vms), why); err != nil {
			return &exitError{code: 2, msg: err.Error()}
		}
		// The agents connect like the simulator (URL and TLS), with
		// credentials of their own.
		base := o.conn.busConfig("agent")
		fc.Connect = enrollingAgents(base, func() string { return o.enrollURL }, slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})))
	}
	fl, err := fleet.New(fc)
	if err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	names := map[string]string{}
	for _, v := range fl.VMs() {
		names[v.Key] = v.Name
		names[v.ResourceID] = v.Name
	}
	col = devview.NewCollector(started.Add(-time.Second), func(vm string) string {
		if n, ok := names[vm]; ok {
			return n
		}
		return vm
	})
	fmt.Fprintf(out, "vigil sim: %d VMs, scenario %q, ARM API %s, webhook %s\n", o.vms, o.scenario, fl.ARMEndpoint(), o.webhook)
	if o.grantKey != "" {
		// Under bus identity the grants are the administrator's, on its
		// own subject.
		actor, err := o.conn.attributedActor(cmd, "vigil-sim")
		if err != nil {
			return err
		}
		if err := grantFleet(ctx, conn, fl, o.grantKey, actor); err != nil {
			return err
		}
	}
	viewCtx, stopView := context.WithCancel(context.WithoutCancel(ctx))
	shown := make(chan struct{})
	go func() {
		defer close(shown)
		devview.Show(viewCtx, out, col, devview.IsTerminal(out), 5*time.Second)
	}()
	colErr := make(chan error, 1)
	go func() { colErr <- col.Run(viewCtx, conn.JS) }()
	runErr := fl.Run(ctx, conn)
	stopView()
	<-shown
	if err := <-colErr; err != nil && runErr == nil {
		runErr = err
	}
	if ctx.Err() != nil && runErr == nil && cmd.Context().Err() == nil {
		runErr = nil // --for elapsed
	}
	return finishSim(out, o, fl, col, started, runErr)
}

// grantFleet asks keyguard to grant every VM the key as actor, waiting
// for keyguard to answer.
func grantFleet(ctx context.Context, conn *bus.Conn, fl *fleet.Fleet, key, actor string) error {
	for _, v := range fl.VMs() {
		for attempt := 0; ; attempt++ {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := keyguard.Grant(rctx, conn, keyguard.GrantRequest{VM: v.Key, VMID: v.VMID, Key: key, Actor: actor, Reason: "simulated fleet"})
			cancel()
			if err == nil {
				break
			}
			if ctx.Err() != nil || attempt > 100 {
				return fmt.Errorf("grant %s to %s: %w", key, v.Name, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

func finishSim(out io.Writer, o *simRunOptions, fl *fleet.Fleet, col *devview.Collector, started time.Time, runErr error) error {
	s := summarizeRun(col, fl, started)
	if err := writeSummary(out, o.summary, s); err != nil {
		return err
	}
	if runErr != nil {
		return runErr
	}
	if o.check {
		if err := s.Check(); err != nil {
			return &exitError{code: 1, msg: err.Error()}
		}
		fmt.Fprintln(out, "outcome: as expected")
	}
	return nil
}

func newSimExportCmd() *cobra.Command {
	var dir string
	var interval, grace time.Duration
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the simulated vendors' roots and the policy that healthy simulated VMs satisfy",
		Long: `Writes <dir>/sim-roots.pem (give it to vigil-attest-worker as -test-roots and to
vigil-keyguard as -evidence-test-roots) and <dir>/sim-policy.yaml (their -policy).
Never give these roots to a verifier of real evidence.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{})
			if err != nil {
				return err
			}
			pol := auth.Policy()
			if interval > 0 {
				pol.Schedule.ReattestInterval = interval
			}
			if grace > 0 {
				pol.Schedule.GracePeriod = grace
			}
			doc, err := yaml.Marshal(pol)
			if err != nil {
				return fmt.Errorf("encode policy: %w", err)
			}
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			roots := filepath.Join(dir, "sim-roots.pem")
			policy := filepath.Join(dir, "sim-policy.yaml")
			if err := os.WriteFile(roots, auth.TrustRoots().MarshalPEM(), 0o644); err != nil {
				return err
			}
			if err := os.WriteFile(policy, doc, 0o644); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s and %s\n", roots, policy)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", ".", "directory to write into")
	cmd.Flags().DurationVar(&interval, "interval", 0, "re-attestation interval to put in the policy (0: the policy's default)")
	cmd.Flags().DurationVar(&grace, "grace", 0, "grace period to put in the policy (0: the policy's default)")
	return cmd
}
