// Command vigil-keyguard binds key release to attestation: it revokes a
// VM's key grants (local release service, Azure Key Vault) the moment the VM
// is untrusted, stale or deleted, and releases secrets only to VMs whose
// fresh evidence binds the release.
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
	"strings"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vigil-keyguard:", err)
		if errors.Is(err, errUsage) || errors.Is(err, keyguard.ErrConfig) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("vigil-keyguard", flag.ContinueOnError)
	str := func(name, def, usage string) *string {
		return fs.String(name, env(name, def), usage+" (env "+envName(name)+")")
	}
	var (
		natsURL    = str("nats-url", bus.DefaultURL, "NATS server URL(s), comma separated")
		natsCreds  = str("nats-creds", "", "NATS credentials file")
		natsCA     = str("nats-ca", "", "CA file for NATS TLS")
		natsCert   = str("nats-cert", "", "client certificate for NATS TLS")
		natsKey    = str("nats-key", "", "client key for NATS TLS")
		replicas   = str("replicas", "1", "stream and bucket replicas (3 on a cluster)")
		httpAddr   = str("http", ":8084", "listen address of /healthz, /readyz and /metrics")
		masterKey  = str("master-key-file", "", "file holding the 32-byte master key that encrypts secrets at rest (raw, hex or base64)")
		createKey  = str("create-master-key", "false", "generate the master key file when it does not exist yet (first start)")
		configFile = str("config", "", "YAML file with grants, Azure Key Vault backends and the restore policy")
		autoRest   = str("auto-restore", "", "revocation causes restored automatically once the VM is trusted again: stale, untrusted (comma separated)")
		policyFile = str("policy", "", "attestation policy (YAML) for release evidence; default: Vigil's default Azure CVM policy")
		testRoots  = str("evidence-test-roots", "", "PEM file of simulated vendor roots to trust (simulated fleets only)")
		offline    = str("evidence-offline", "false", "never fetch from AMD KDS or Intel PCS")
		tdxColl    = str("evidence-tdx-collateral", "false", "verify TDX quotes against Intel PCS collateral (TCB status)")
		nonceTTL   = str("nonce-ttl", "2m", "validity of a release nonce (at most 5m)")
		reconcile  = str("reconcile-interval", "30s", "how often every grant is checked against the attestation status")
		logLevel   = str("log-level", "info", "log level: debug, info, warn, error")
	)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	level, err := telemetry.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if *masterKey == "" {
		return fmt.Errorf("%w: -master-key-file is required", errUsage)
	}
	var topoReplicas int
	if _, err := fmt.Sscan(*replicas, &topoReplicas); err != nil || (topoReplicas != 1 && topoReplicas != 3) {
		return fmt.Errorf("%w: -replicas must be 1 or 3", errUsage)
	}
	ttl, err := time.ParseDuration(*nonceTTL)
	if err != nil {
		return fmt.Errorf("%w: -nonce-ttl: %w", errUsage, err)
	}
	every, err := time.ParseDuration(*reconcile)
	if err != nil {
		return fmt.Errorf("%w: -reconcile-interval: %w", errUsage, err)
	}
	boolFlag := func(name, v string) (bool, error) {
		switch strings.ToLower(v) {
		case "true", "1", "yes":
			return true, nil
		case "false", "0", "no", "":
			return false, nil
		}
		return false, fmt.Errorf("%w: -%s: %q is not a boolean", errUsage, name, v)
	}
	off, err := boolFlag("evidence-offline", *offline)
	if err != nil {
		return err
	}
	tdx, err := boolFlag("evidence-tdx-collateral", *tdxColl)
	if err != nil {
		return err
	}
	create, err := boolFlag("create-master-key", *createKey)
	if err != nil {
		return err
	}
	if create {
		if _, err := secrets.EnsureMasterKeyFile(*masterKey); err != nil {
			return fmt.Errorf("%w: -create-master-key: %w", errUsage, err)
		}
	}

	log := telemetry.Logger("vigil-keyguard", os.Stderr, level)
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-keyguard", SetGlobal: true, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()

	cfg := keyguard.Config{
		Bus: bus.Config{URL: *natsURL, Name: "vigil-keyguard", CredsFile: *natsCreds,
			TLSCAFile: *natsCA, TLSCertFile: *natsCert, TLSKeyFile: *natsKey},
		MasterKeyFile:     *masterKey,
		HTTPAddr:          *httpAddr,
		NonceTTL:          ttl,
		ReconcileInterval: every,
		Telemetry:         tel,
		Logger:            log,
		Evidence: keyguard.EvidenceConfig{
			Verifier: evidence.Config{Offline: off, TDXCollateral: tdx},
			Build:    "vigil-keyguard",
		},
	}
	cfg.Topology.Replicas = topoReplicas
	if *configFile != "" {
		f, err := keyguard.LoadFile(*configFile)
		if err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		f.Apply(&cfg)
	}
	for _, c := range strings.Split(*autoRest, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Restore.Automatic = append(cfg.Restore.Automatic, c)
		}
	}
	if *policyFile != "" {
		b, err := os.ReadFile(*policyFile)
		if err != nil {
			return fmt.Errorf("%w: -policy: %w", errUsage, err)
		}
		p, err := evidence.ParsePolicy(b)
		if err != nil {
			return fmt.Errorf("%w: -policy %s: %w", errUsage, *policyFile, err)
		}
		cfg.Evidence.Policy = p
	}
	if *testRoots != "" {
		b, err := os.ReadFile(*testRoots)
		if err != nil {
			return fmt.Errorf("%w: -evidence-test-roots: %w", errUsage, err)
		}
		r, err := evidence.ParseTestRootsPEM(b)
		if err != nil {
			return fmt.Errorf("%w: -evidence-test-roots %s: %w", errUsage, *testRoots, err)
		}
		cfg.Evidence.Verifier.TestRoots = r
		log.Warn("trusting simulated vendor roots: for simulated fleets only", "file", *testRoots)
	}
	return keyguard.Run(ctx, cfg)
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
