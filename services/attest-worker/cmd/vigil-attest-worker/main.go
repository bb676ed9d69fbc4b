// Command vigil-attest-worker re-attests every running VM of the fleet on a
// schedule kept in JetStream: it challenges the VM's agent with a fresh
// nonce, verifies the evidence, applies the policy, and publishes the
// verdict and the VM's status. Run as many copies as the fleet needs; they
// share the work.
//
// Every flag has a VIGIL_* environment fallback (flag -foo-bar reads
// VIGIL_FOO_BAR).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	attestworker "github.com/vigil-cc/vigil/services/attest-worker"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-attest-worker:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(args []string) error {
	fs := flag.NewFlagSet("vigil-attest-worker", flag.ContinueOnError)
	str := func(name, def, usage string) *string {
		return fs.String(name, env(name, def), usage+" (env "+envName(name)+")")
	}
	var (
		natsURL     = str("nats-url", bus.DefaultURL, "NATS server URL(s), comma separated")
		natsCreds   = str("nats-creds", "", "NATS credentials file")
		natsCA      = str("nats-ca", "", "CA file for NATS TLS")
		natsCert    = str("nats-cert", "", "client certificate for NATS TLS")
		natsKey     = str("nats-key", "", "client key for NATS TLS")
		replicas    = str("replicas", "1", "stream and bucket replicas (3 on a cluster)")
		httpAddr    = str("http", ":8082", `listen address of /healthz, /readyz and /metrics ("" turns them off)`)
		name        = str("name", "", "this worker's name in logs and status records (default host-pid)")
		concurrency = str("concurrency", "64", "jobs handled at once by this worker")
		policyFile  = str("policy", "", "policy YAML (default: the built-in Azure CVM policy)")
		interval    = str("interval", "", "re-attestation interval (default: the policy's, 5m)")
		grace       = str("grace", "", "grace period before a VM without valid evidence is stale (default: the policy's)")
		jitter      = str("jitter", "0.1", "how far a due time may move toward the VM's slot, as a fraction of the interval")
		timeout     = str("challenge-timeout", "10s", "bound on one challenge round trip")
		sweep       = str("sweep-every", "", "period of the missed-deadline sweep (default: the smaller of the interval and 1m)")
		offline     = str("offline", "false", "never fetch from AMD KDS or Intel PCS (VCEKs from bundles and the collateral cache only)")
		tdxColl     = str("tdx-collateral", "false", "obtain Intel PCS collateral for TDX TCB status")
		testRoots   = str("test-roots", "", "PEM file of simulator trust roots (simulated fleets only; never in production)")
		logLevel    = str("log-level", "info", "log level: debug, info, warn, error")
	)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	level, err := telemetry.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	cfg := attestworker.Config{
		NATS: bus.Config{URL: *natsURL, Name: "vigil-attest-worker", CredsFile: *natsCreds,
			TLSCAFile: *natsCA, TLSCertFile: *natsCert, TLSKeyFile: *natsKey},
		Name:     *name,
		HTTPAddr: *httpAddr,
	}
	if cfg.Topology.Replicas, err = strconv.Atoi(*replicas); err != nil || (cfg.Topology.Replicas != 1 && cfg.Topology.Replicas != 3) {
		return fmt.Errorf("%w: -replicas must be 1 or 3", errUsage)
	}
	if cfg.Concurrency, err = strconv.Atoi(*concurrency); err != nil || cfg.Concurrency < 1 {
		return fmt.Errorf("%w: -concurrency %q", errUsage, *concurrency)
	}
	durations := []struct {
		flag string
		val  string
		dst  *time.Duration
	}{
		{"interval", *interval, &cfg.Timing.Interval},
		{"grace", *grace, &cfg.Timing.Grace},
		{"challenge-timeout", *timeout, &cfg.ChallengeTimeout},
		{"sweep-every", *sweep, &cfg.SweepEvery},
	}
	for _, d := range durations {
		if d.val == "" {
			continue
		}
		if *d.dst, err = time.ParseDuration(d.val); err != nil || *d.dst <= 0 {
			return fmt.Errorf("%w: -%s %q", errUsage, d.flag, d.val)
		}
	}
	if cfg.Timing.Jitter, err = strconv.ParseFloat(*jitter, 64); err != nil {
		return fmt.Errorf("%w: -jitter %q", errUsage, *jitter)
	}
	if cfg.Verifier.Offline, err = strconv.ParseBool(*offline); err != nil {
		return fmt.Errorf("%w: -offline %q", errUsage, *offline)
	}
	if cfg.Verifier.TDXCollateral, err = strconv.ParseBool(*tdxColl); err != nil {
		return fmt.Errorf("%w: -tdx-collateral %q", errUsage, *tdxColl)
	}
	if *policyFile != "" {
		doc, err := os.ReadFile(*policyFile)
		if err != nil {
			return err
		}
		if cfg.Policy, err = evidence.ParsePolicy(doc); err != nil {
			return fmt.Errorf("%s: %w", *policyFile, err)
		}
	}
	if *testRoots != "" {
		pem, err := os.ReadFile(*testRoots)
		if err != nil {
			return err
		}
		if cfg.Verifier.TestRoots, err = evidence.ParseTestRootsPEM(pem); err != nil {
			return fmt.Errorf("%s: %w", *testRoots, err)
		}
	}

	log := telemetry.Logger("vigil-attest-worker", os.Stderr, level)
	if cfg.Verifier.TestRoots != nil {
		log.Warn("trusting simulator roots: evidence from simulated hardware is accepted", "file", *testRoots)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-attest-worker", SetGlobal: true, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	cfg.Logger, cfg.Telemetry = log, tel
	return attestworker.Run(ctx, cfg)
}

func envName(flagName string) string {
	return "VIGIL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func env(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
}
