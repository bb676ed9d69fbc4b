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
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/agent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "release" {
		os.Exit(svcmain.Run(context.Background(), "vigil-agent release", os.Args[2:], os.Stderr, defineRelease(os.Stdout)))
	}
	svcmain.Main("vigil-agent", defineServe)
}

// vmFlags are the flags that say which VM this is and where its vTPM is.
type vmFlags struct {
	nats                                                    func() bus.Config
	resourceID, vmID, imdsURL, tpmPath, eventLog, enrollURL *string
}

func defineVM(f *svcmain.Flags) *vmFlags {
	return &vmFlags{
		nats:       f.NATS("vigil-agent"),
		resourceID: f.String("resource-id", "", "ARM resource ID of this VM (default: from the instance metadata service)"),
		vmID:       f.String("vm-id", "", "ARM vmId of this VM (default: from the instance metadata service)"),
		imdsURL:    f.String("imds-url", agent.DefaultIMDSURL, "instance metadata service"),
		tpmPath:    f.String("tpm", agent.DefaultTPMPath, "TPM device"),
		eventLog:   f.String("event-log", agent.DefaultEventLogPath, `TCG event log ("-": leave it out)`),
		enrollURL:  f.String("enroll-url", "", "keyguard's enrollment API: earn the bus credentials by attestation and renew them (instead of -nats-creds)"),
	}
}

func defineServe(f *svcmain.Flags) svcmain.RunFunc {
	vm := defineVM(f)
	httpAddr := f.String("http", "127.0.0.1:9465", `listen address of /healthz, /readyz and /metrics ("" turns them off)`)
	timeout := f.Duration("challenge-timeout", 10*time.Second, "bound on the work for one challenge")
	f.Check(func() error {
		if *timeout <= 0 {
			return fmt.Errorf("-challenge-timeout %s: must be positive", *timeout)
		}
		return nil
	})
	return func(ctx context.Context, rt svcmain.Runtime) error {
		return agent.Run(ctx, agent.Config{
			Options:          service.Options{NATS: vm.nats(), HTTPAddr: *httpAddr, Logger: rt.Logger, Telemetry: rt.Telemetry},
			ResourceID:       *vm.resourceID,
			VMID:             *vm.vmID,
			IMDS:             agent.NewIMDS(*vm.imdsURL),
			TPMPath:          *vm.tpmPath,
			EventLogPath:     *vm.eventLog,
			EnrollURL:        *vm.enrollURL,
			ChallengeTimeout: *timeout,
		})
	}
}

func defineRelease(stdout io.Writer) func(*svcmain.Flags) svcmain.RunFunc {
	return func(f *svcmain.Flags) svcmain.RunFunc {
		vm := defineVM(f)
		out := f.String("out", "", "write the secret to this file (mode 0600, replaced atomically; never through a symbolic link) instead of standard output")
		timeout := f.Duration("timeout", 30*time.Second, "bound on the whole release")
		f.ExpectArgs(1, "KEYNAME")
		f.Check(func() error {
			if *timeout <= 0 {
				return fmt.Errorf("-timeout %s: must be positive", *timeout)
			}
			if f.NArg() == 1 && !keyrelease.ValidKeyName(f.Arg(0)) {
				return fmt.Errorf("%q is not a valid key name", f.Arg(0))
			}
			return nil
		})
		return func(ctx context.Context, rt svcmain.Runtime) error {
			keyName := f.Arg(0)
			if *out != "" {
				// Before the release: a secret that cannot be stored is not fetched.
				if err := agent.CheckSecretPath(*out); err != nil {
					return fmt.Errorf("%w: -out: %w", svcmain.ErrUsage, err)
				}
			}
			ctx, cancel := context.WithTimeout(ctx, *timeout)
			defer cancel()
			rel, err := agent.Release(ctx, agent.ReleaseConfig{
				NATS:         vm.nats(),
				ResourceID:   *vm.resourceID,
				IMDS:         agent.NewIMDS(*vm.imdsURL),
				TPMPath:      *vm.tpmPath,
				EventLogPath: *vm.eventLog,
				EnrollURL:    *vm.enrollURL,
				Logger:       rt.Logger,
			}, keyName)
			if err != nil {
				if code := keyrelease.RefusalCode(err); code != "" {
					return fmt.Errorf("keyguard refused the release (%s): %w", code, err)
				}
				return err
			}
			if *out != "" {
				if err := agent.WriteSecretFile(*out, rel.Secret); err != nil {
					return err
				}
				rt.Logger.Info("secret released", "key", keyName, "version", rel.Version, "file", *out)
				return nil
			}
			_, err = stdout.Write(rel.Secret)
			return err
		}
	}
}
