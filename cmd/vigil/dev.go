package main

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devenv"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// devOptions are the flags of `vigil dev`. Services that join the
// development environment add their flags here and their component in
// devComponents.
type devOptions struct {
	listen      string
	dataDir     string
	opsListen   string
	duration    time.Duration
	logLevel    string
	natsLogging bool
}

func newDevCmd() *cobra.Command {
	o := &devOptions{}
	cmd := &cobra.Command{
		Use:   "dev",
		Short: "Run Vigil in one process on an embedded NATS server",
		Long: `Run Vigil's development environment in one process: an embedded NATS server with
JetStream (every stream and bucket provisioned) and the Vigil components on top of it.
It runs until Ctrl-C, or for --duration. Data is kept in --data between runs.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runDev(cmd, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", flagEnv("VIGIL_DEV_LISTEN", devenv.DefaultListen), "NATS client address host:port (port 0 picks a free one) [VIGIL_DEV_LISTEN]")
	f.StringVar(&o.dataDir, "data", flagEnv("VIGIL_DEV_DATA", "./"+devenv.DefaultDataDir), "data directory; the JetStream store is <data>/nats [VIGIL_DEV_DATA]")
	f.StringVar(&o.opsListen, "ops-listen", flagEnv("VIGIL_DEV_OPS_LISTEN", "127.0.0.1:9464"), `address for /healthz, /readyz and /metrics; "" turns them off [VIGIL_DEV_OPS_LISTEN]`)
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: run until Ctrl-C)")
	f.StringVar(&o.logLevel, "log-level", flagEnv("VIGIL_LOG_LEVEL", "info"), "log level: debug, info, warn, error [VIGIL_LOG_LEVEL]")
	f.BoolVar(&o.natsLogging, "nats-log", false, "show the NATS server's own log")
	return cmd
}

// devComponents lists what runs on top of NATS in `vigil dev`.
func devComponents(*devOptions) []devenv.Component {
	return nil
}

func runDev(cmd *cobra.Command, o *devOptions) error {
	if o.duration < 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("--duration %s: must not be negative", o.duration)}
	}
	level, err := telemetry.ParseLevel(o.logLevel)
	if err != nil {
		return &exitError{code: 2, msg: "--log-level: " + err.Error()}
	}
	ctx := cmd.Context()
	log := telemetry.Logger("vigil-dev", cmd.ErrOrStderr(), level)

	env, err := devenv.Start(ctx, devenv.Config{
		Listen:      o.listen,
		DataDir:     o.dataDir,
		OpsListen:   o.opsListen,
		Duration:    o.duration,
		Logger:      log,
		NATSLogging: o.natsLogging,
		Version:     version,
	})
	if err != nil {
		if errors.Is(err, devenv.ErrListen) {
			return &exitError{code: 2, msg: err.Error()}
		}
		return err
	}
	env.Banner(cmd.OutOrStdout())
	return env.Run(ctx, devComponents(o)...)
}
