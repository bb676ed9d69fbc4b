package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"time"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devenv"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/services/console"
)

// consoleVerifyEvery is how often `vigil dev`'s console verifies the
// audit log (production default 30s): often, for a short demo.
const consoleVerifyEvery = 3 * time.Second

// printConsoleURL prints the console's URL when its port is known before
// it listens (a fixed port); with port 0 it is printed once listening.
func printConsoleURL(w io.Writer, addr string) {
	if _, port, err := net.SplitHostPort(addr); err == nil && port != "0" {
		fmt.Fprintf(w, "Fleet console: http://%s  (open it in a browser)\n", addr)
	}
}

// consoleComponent runs the fleet console as the console principal
// (read-only), verifying the run's audit log; off with --console "".
func (d *devRun) consoleComponent() devenv.Component {
	return devenv.Component{Name: "console", Run: func(ctx context.Context, env *devenv.Env) error {
		if d.o.console == "" {
			<-ctx.Done()
			return nil
		}
		opts, err := d.options(env, "console", busauth.Console)
		if err != nil {
			return err
		}
		opts.Health = env.Health
		err = console.Run(ctx, console.Config{
			Options:      opts,
			Addr:         d.o.console,
			AuditLogDir:  filepath.Join(d.auditDir, "log"),
			AuditKeyFile: filepath.Join(d.auditDir, "signer.pub"),
			VerifyEvery:  consoleVerifyEvery,
			Interval:     d.o.interval,
			OnConsoleListen: func(url string) {
				if _, port, _ := net.SplitHostPort(d.o.console); port == "0" {
					fmt.Fprintf(d.out, "Fleet console: %s  (open it in a browser)\n", url)
				}
			},
		})
		if errors.Is(err, syscall.EADDRINUSE) {
			// Another console (or anything) holds the address: the
			// pipeline runs on without one.
			fmt.Fprintf(d.out, "Fleet console not started: %v (pick another address with --console)\n", err)
			<-ctx.Done()
			return nil
		}
		return err
	}}
}
