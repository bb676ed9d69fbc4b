package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// keyguardConn holds the connection flags shared by `vigil keyguard` commands.
type keyguardConn struct {
	natsFlags
	timeout time.Duration
}

func (o *keyguardConn) flags(cmd *cobra.Command) {
	f := cmd.PersistentFlags()
	o.natsFlags.register(f)
	f.DurationVar(&o.timeout, "timeout", 15*time.Second, "give up after this long")
}

func (o *keyguardConn) connect(ctx context.Context) (*bus.Conn, error) {
	if err := o.natsFlags.validate(); err != nil {
		return nil, usageError("%v", err)
	}
	if o.timeout <= 0 {
		return nil, usageError("--timeout %s: must be positive", o.timeout)
	}
	cfg := o.busConfig("vigil keyguard")
	cfg.DrainTimeout = 2 * time.Second
	c, err := bus.Connect(ctx, cfg)
	if err != nil {
		return nil, &exitError{code: 1, msg: err.Error()}
	}
	return c, nil
}

func newKeyguardCmd() *cobra.Command {
	o := &keyguardConn{}
	cmd := &cobra.Command{
		Use:   "keyguard",
		Short: "Inspect and manage key release grants",
		Long: `keyguard releases keys only to VMs whose attestation is good, and revokes every grant
of a VM the moment it is untrusted, stale or deleted. A VM that is trusted again keeps
its revoked grants until an operator restores them (or the automatic restore policy does).`,
	}
	o.flags(cmd)
	cmd.AddCommand(newKeyguardGrantsCmd(o), newKeyguardRestoreCmd(o), newKeyguardRevokeCmd(o),
		newKeyguardGrantCmd(o), newKeyguardSecretCmd(o))
	return cmd
}

func newKeyguardGrantsCmd(o *keyguardConn) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "grants [VM]",
		Short: "List key grants, of every VM or of one (VM key or ARM resource ID)",
		Example: `  vigil keyguard grants
  vigil keyguard grants /subscriptions/.../resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-1 --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			vm := ""
			if len(args) == 1 {
				k, err := keyguard.ResolveVM(args[0])
				if err != nil {
					return usageError("%v", err)
				}
				vm = k
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			s, err := grants.Open(ctx, c.NC, c.JS)
			if err != nil {
				return err
			}
			list, err := s.List(ctx, vm)
			if err != nil {
				return err
			}
			return printGrants(cmd.OutOrStdout(), list, asJSON)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON grant per line")
	return cmd
}

func printGrants(w io.Writer, list []grants.Entry, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, e := range list {
			if err := enc.Encode(e.Grant); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VM\tBACKEND\tKEY\tSTATE\tCAUSE\tAPPLIED\tCHANGED\tACTOR\tREASON")
	for _, e := range list {
		applied := "yes"
		if !e.Applied {
			applied = "pending"
			if e.ApplyError != "" {
				applied = fmt.Sprintf("failing (%d): %s", e.ApplyAttempts, e.ApplyError)
			}
		}
		cause := e.RevokedFor
		if cause == "" {
			cause = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.VMKey, e.Backend, e.KeyName, e.State, cause, applied,
			e.ChangedAt.Format(time.RFC3339), kgDash(e.Actor), kgDash(kgOneLine(e.Reason)))
	}
	return tw.Flush()
}

func kgDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func kgOneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 80 {
		s = s[:77] + "..."
	}
	return s
}

// operatorName names the operator in audited changes: $VIGIL_ACTOR, else
// user@host with every character that cannot be in a subject token ('.',
// '*', '>', white space) replaced by '_': the actor is a subject token.
func operatorName() string {
	if a := os.Getenv("VIGIL_ACTOR"); a != "" {
		return a
	}
	name := "unknown"
	if u, err := user.Current(); err == nil && u.Username != "" {
		name = u.Username
	}
	if h, err := os.Hostname(); err == nil && h != "" {
		name += "@" + h
	}
	return strings.Map(func(r rune) rune {
		if strings.ContainsRune(".*>", r) || unicode.IsSpace(r) {
			return '_'
		}
		return r
	}, name)
}

// attributedActor is the actor of a policy version or operator request,
// which names it in the subject (vigil.events.policy.<id>.<actor>,
// vigil.keyguard.admin.<action>.<actor>): with an administrator's
// credentials file (--nats-creds) its name, which the server pins, and a
// differing --actor (or $VIGIL_ACTOR) is refused; without one, actor
// (--actor), which must be a subject token.
func (n *natsFlags) attributedActor(cmd *cobra.Command, actor string) (string, error) {
	explicit := os.Getenv("VIGIL_ACTOR") != ""
	if f := cmd.Flags().Lookup("actor"); f != nil && f.Changed {
		explicit = true
	}
	if n.creds != "" {
		if err := n.validate(); err != nil {
			return "", usageError("%v", err)
		}
		c, err := n.credentials()
		if err != nil {
			return "", err
		}
		if c.Principal == busauth.Admin {
			if explicit && actor != c.Name {
				return "", usageError("--actor %q differs from the administrator %q of the credentials file; the actor recorded is the credentials'", actor, c.Name)
			}
			return c.Name, nil
		}
	}
	if !events.ValidSubjectToken(actor) {
		return "", usageError("--actor %q must be one subject token: not empty, without '.', '*', '>' or white space", actor)
	}
	return actor, nil
}

type changeFlags struct {
	reason string
	actor  string
	keys   []string
}

func (f *changeFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.reason, "reason", "", "why (required; recorded in the audit log)")
	cmd.Flags().StringVar(&f.actor, "actor", operatorName(), "who (recorded in the audit log) [VIGIL_ACTOR]")
	cmd.Flags().StringSliceVar(&f.keys, "key", nil, "only these key names (repeatable; default: every grant of the VM)")
}

func (f *changeFlags) request(cmd *cobra.Command, o *keyguardConn, vm string) (keyguard.ChangeRequest, error) {
	if _, err := keyguard.ResolveVM(vm); err != nil {
		return keyguard.ChangeRequest{}, usageError("%v", err)
	}
	if strings.TrimSpace(f.reason) == "" {
		return keyguard.ChangeRequest{}, usageError("--reason is required")
	}
	if f.actor == "" {
		return keyguard.ChangeRequest{}, usageError("--actor must not be empty")
	}
	actor, err := o.attributedActor(cmd, f.actor)
	if err != nil {
		return keyguard.ChangeRequest{}, err
	}
	return keyguard.ChangeRequest{VM: vm, Keys: f.keys, Reason: f.reason, Actor: actor}, nil
}

func newKeyguardRestoreCmd(o *keyguardConn) *cobra.Command {
	return newKeyguardChangeCmd(o, "restore", keyguard.Restore, &cobra.Command{
		Use:   "restore VM --reason TEXT",
		Short: "Restore the revoked grants of a VM that is trusted again (audited)",
		Long: `Restore makes the revoked grants of a VM active again, on every backend. The VM's
attestation status must be trusted or warning. The operator (--actor) and the reason are
recorded in the io.vigil.vm.key.v1 events and so in the audit log.`,
		Example: `  vigil keyguard restore 4kq3x2... --reason "re-imaged after INC-1234"`,
	})
}

func newKeyguardRevokeCmd(o *keyguardConn) *cobra.Command {
	return newKeyguardChangeCmd(o, "revoke", keyguard.Revoke, &cobra.Command{
		Use:   "revoke VM --reason TEXT",
		Short: "Revoke grants of a VM by hand (audited; only an operator restores them)",
	})
}

// newKeyguardChangeCmd completes cmd as the command that asks keyguard to
// make change (restore or revoke) to the grants of one VM.
func newKeyguardChangeCmd(o *keyguardConn, action string, change func(context.Context, *bus.Conn, keyguard.ChangeRequest) (keyguard.ChangeResponse, error), cmd *cobra.Command) *cobra.Command {
	f := &changeFlags{}
	cmd.Args = kgArgs(1, "VM")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		req, err := f.request(cmd, o, args[0])
		if err != nil {
			return err
		}
		return runChange(cmd, o, action, func(ctx context.Context, c *bus.Conn) (keyguard.ChangeResponse, error) {
			return change(ctx, c, req)
		})
	}
	f.add(cmd)
	return cmd
}

func newKeyguardGrantCmd(o *keyguardConn) *cobra.Command {
	var req keyguard.GrantRequest
	cmd := &cobra.Command{
		Use:   "grant VM KEY",
		Short: "Let a VM obtain a key (local release service or a configured Key Vault backend)",
		Example: `  vigil keyguard grant /subscriptions/.../virtualMachines/app-1 disk-key
  vigil keyguard grant 4kq3x2... app-1-disk --backend akv-prod --vm-id 26f8bc30-774e-4290-8e7a-535f3b672aee`,
		Args: kgArgs(2, "VM and KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := keyguard.ResolveVM(args[0]); err != nil {
				return usageError("%v", err)
			}
			req.VM, req.Key = args[0], args[1]
			if req.Actor == "" {
				return usageError("--actor must not be empty")
			}
			actor, err := o.attributedActor(cmd, req.Actor)
			if err != nil {
				return err
			}
			req.Actor = actor
			return runChange(cmd, o, "grant", func(ctx context.Context, c *bus.Conn) (keyguard.ChangeResponse, error) {
				return keyguard.Grant(ctx, c, req)
			})
		},
	}
	cmd.Flags().StringVar(&req.Backend, "backend", keyguard.BackendLocal, "backend: local or the name of a configured Azure Key Vault backend")
	cmd.Flags().StringVar(&req.VMID, "vm-id", "", "pin the grant to the VM's vmId (default: the vmId ARM reports, from ingest's inventory, when the key is used)")
	cmd.Flags().StringVar(&req.Reason, "reason", "", "why (recorded in the audit log)")
	cmd.Flags().StringVar(&req.Actor, "actor", operatorName(), "who (recorded in the audit log) [VIGIL_ACTOR]")
	return cmd
}

// runChange sends an operator request and prints what changed.
func runChange(cmd *cobra.Command, o *keyguardConn, what string, send func(context.Context, *bus.Conn) (keyguard.ChangeResponse, error)) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
	defer cancel()
	c, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = c.Close() }()
	resp, err := send(ctx, c)
	if err != nil {
		var re *bus.ReplyError
		switch {
		case errors.As(err, &re):
			return &exitError{code: 1, msg: fmt.Sprintf("%s refused: %s", what, re.Error())}
		case errors.Is(err, bus.ErrNoResponders):
			return &exitError{code: 1, msg: "no keyguard is running on " + bus.RedactURL(o.url)}
		}
		return &exitError{code: 1, msg: fmt.Sprintf("%s: %v", what, err)}
	}
	w := cmd.OutOrStdout()
	if len(resp.Changed) == 0 {
		fmt.Fprintf(w, "%s: nothing to change for VM %s\n", what, resp.VMKey)
	}
	for _, g := range resp.Changed {
		fmt.Fprintf(w, "%s: %s on %s for VM %s is now %s\n", what, g.KeyName, g.Backend, g.VMKey, g.State)
	}
	for _, g := range resp.Unchanged {
		fmt.Fprintf(w, "%s: %s on %s for VM %s stays %s\n", what, g.KeyName, g.Backend, g.VMKey, g.State)
	}
	for _, n := range resp.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	return nil
}

func newKeyguardSecretCmd(o *keyguardConn) *cobra.Command {
	var masterKeyFile string
	cmd := &cobra.Command{
		Use:   "secret",
		Short: "Store secrets of the local release service (encrypted under the master key)",
	}
	cmd.PersistentFlags().StringVar(&masterKeyFile, "master-key-file", os.Getenv("VIGIL_MASTER_KEY_FILE"), "keyguard's master key file [VIGIL_MASTER_KEY_FILE]")
	open := func(ctx context.Context) (*secrets.Store, *bus.Conn, error) {
		if masterKeyFile == "" {
			return nil, nil, usageError("--master-key-file is required")
		}
		mk, err := secrets.LoadMasterKey(masterKeyFile)
		if err != nil {
			return nil, nil, usageError("%v", err)
		}
		c, err := o.connect(ctx)
		if err != nil {
			return nil, nil, err
		}
		s, err := secrets.Open(ctx, c.NC, c.JS, mk)
		if err != nil {
			_ = c.Close()
			return nil, nil, err
		}
		return s, c, nil
	}

	var file string
	put := &cobra.Command{
		Use:   "put NAME (--file FILE | --file -)",
		Short: "Store a secret (a new version when it exists)",
		Args:  kgArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return usageError("--file is required (- reads standard input)")
			}
			var value []byte
			var err error
			if file == "-" {
				value, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), secrets.MaxSecretSize+1))
			} else {
				value, err = os.ReadFile(file)
			}
			if err != nil {
				return usageError("--file: %v", err)
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			s, c, err := open(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			v, err := s.Put(ctx, args[0], value)
			clear(value)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "stored %s version %d (master key %s)\n", args[0], v, s.KeyID())
			return nil
		},
	}
	put.Flags().StringVar(&file, "file", "", "read the secret from this file (- for standard input)")

	list := &cobra.Command{
		Use:   "list",
		Short: "List stored secrets (names only)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			s, c, err := open(ctx)
			if err != nil {
				return err
			}
			defer func() { _ = c.Close() }()
			names, err := s.Names(ctx)
			if err != nil {
				return err
			}
			for _, n := range names {
				fmt.Fprintln(cmd.OutOrStdout(), n)
			}
			return nil
		},
	}
	cmd.AddCommand(put, list)
	return cmd
}

func kgArgs(n int, what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != n {
			return usageError("want %s, got %d argument(s)", what, len(args))
		}
		return nil
	}
}
