// Command vigil-agent runs inside an Azure Confidential VM. It answers
// attestation challenges on vigil.agent.<vm>.challenge with evidence from
// the VM's vTPM, and with "vigil-agent release KEYNAME" fetches a secret
// that keyguard releases only to an attested VM.
//
//	vigil-agent [flags]                   serve challenges until stopped
//	vigil-agent release [flags] KEYNAME   print the released secret (or -out FILE)
//
// Every flag has a VIGIL_* environment fallback (flag -foo-bar reads
// VIGIL_FOO_BAR).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/agent"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-agent:", err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

type common struct {
	natsURL, natsCreds, natsCA, natsCert, natsKey *string
	resourceID, vmID, imdsURL                     *string
	tpmPath, eventLog                             *string
	logLevel                                      *string
}

func flags(name string) (*flag.FlagSet, *common, func(n, def, usage string) *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	str := func(n, def, usage string) *string {
		return fs.String(n, env(n, def), usage+" (env "+envName(n)+")")
	}
	c := &common{
		natsURL:    str("nats-url", bus.DefaultURL, "NATS server URL(s), comma separated"),
		natsCreds:  str("nats-creds", "", "NATS credentials file of this VM's agent"),
		natsCA:     str("nats-ca", "", "CA file for NATS TLS"),
		natsCert:   str("nats-cert", "", "client certificate for NATS TLS"),
		natsKey:    str("nats-key", "", "client key for NATS TLS"),
		resourceID: str("resource-id", "", "ARM resource ID of this VM (default: from the instance metadata service)"),
		vmID:       str("vm-id", "", "ARM vmId of this VM (default: from the instance metadata service)"),
		imdsURL:    str("imds-url", agent.DefaultIMDSURL, "instance metadata service"),
		tpmPath:    str("tpm", agent.DefaultTPMPath, "TPM device"),
		eventLog:   str("event-log", agent.DefaultEventLogPath, `TCG event log ("-": leave it out)`),
		logLevel:   str("log-level", "info", "log level: debug, info, warn, error"),
	}
	return fs, c, str
}

func (c *common) natsConfig() bus.Config {
	return bus.Config{URL: *c.natsURL, CredsFile: *c.natsCreds, TLSCAFile: *c.natsCA, TLSCertFile: *c.natsCert, TLSKeyFile: *c.natsKey}
}

func run(args []string, stdout io.Writer) error {
	if len(args) > 0 && args[0] == "release" {
		return release(args[1:], stdout)
	}
	fs, c, str := flags("vigil-agent")
	var (
		httpAddr = str("http", "127.0.0.1:9465", `listen address of /healthz, /readyz and /metrics ("" turns them off)`)
		timeout  = str("challenge-timeout", "10s", "bound on the work for one challenge")
	)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", errUsage, fs.Arg(0))
	}
	d, err := time.ParseDuration(*timeout)
	if err != nil || d <= 0 {
		return fmt.Errorf("%w: -challenge-timeout %q", errUsage, *timeout)
	}
	level, err := telemetry.ParseLevel(*c.logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log := telemetry.Logger("vigil-agent", os.Stderr, level)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-agent", SetGlobal: true, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()
	return agent.Run(ctx, agent.Config{
		NATS:             c.natsConfig(),
		ResourceID:       *c.resourceID,
		VMID:             *c.vmID,
		IMDS:             agent.NewIMDS(*c.imdsURL),
		TPMPath:          *c.tpmPath,
		EventLogPath:     *c.eventLog,
		ChallengeTimeout: d,
		Logger:           log,
		Telemetry:        tel,
		HTTPAddr:         *httpAddr,
	})
}

func release(args []string, stdout io.Writer) error {
	fs, c, str := flags("vigil-agent release")
	var (
		out     = str("out", "", "write the secret to this file (mode 0600) instead of standard output")
		timeout = str("timeout", "30s", "bound on the whole release")
	)
	if err := fs.Parse(args); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("%w: vigil-agent release [flags] KEYNAME", errUsage)
	}
	keyName := fs.Arg(0)
	if !keyrelease.ValidKeyName(keyName) {
		return fmt.Errorf("%w: %q is not a valid key name", errUsage, keyName)
	}
	d, err := time.ParseDuration(*timeout)
	if err != nil || d <= 0 {
		return fmt.Errorf("%w: -timeout %q", errUsage, *timeout)
	}
	level, err := telemetry.ParseLevel(*c.logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log := telemetry.Logger("vigil-agent", os.Stderr, level)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	rel, err := agent.Release(ctx, agent.ReleaseConfig{
		NATS:         c.natsConfig(),
		ResourceID:   *c.resourceID,
		IMDS:         agent.NewIMDS(*c.imdsURL),
		TPMPath:      *c.tpmPath,
		EventLogPath: *c.eventLog,
		Logger:       log,
	}, keyName)
	if err != nil {
		if code := keyrelease.RefusalCode(err); code != "" {
			return fmt.Errorf("keyguard refused the release (%s): %w", code, err)
		}
		return err
	}
	if *out != "" {
		if err := os.WriteFile(*out, rel.Secret, 0o600); err != nil {
			return err
		}
		log.Info("secret released", "key", keyName, "version", rel.Version, "file", *out)
		return nil
	}
	_, err = stdout.Write(rel.Secret)
	return err
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
