package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
)

func newAlertsSilenceCmd(o *keyguardConn) *cobra.Command {
	var match []string
	var dur time.Duration
	var reason, id, actorFlag string
	cmd := &cobra.Command{
		Use:   "silence --match ATTR=GLOB... --for DURATION --reason TEXT",
		Short: "Silence matching alerts for a while (recorded on the bus, so in the audit log)",
		Long: `A silence keeps the alerts whose attributes all match its --match globs from every
subscription until it expires (or is lifted). Attributes: severity, code, vm (the VM key),
vm_name, resource_group, subscription, key, state, source, tag.<name>. Setting and lifting
a silence is published as io.vigil.alert.silence.v1 on vigil.events.silence.<actor>,
which the auditor logs.`,
		Example: `  vigil alerts silence --match vm_name='batch-*' --match code=vm.stale --for 2h --reason "batch pool maintenance"
  vigil alerts silence list
  vigil alerts silence lift maint-1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			m, err := keyValues("match", match)
			if err != nil {
				return err
			}
			if len(m) == 0 || dur <= 0 || strings.TrimSpace(reason) == "" {
				return usageError("--match, a positive --for and --reason are required: every silence is audited")
			}
			if id == "" {
				var b [4]byte
				_, _ = rand.Read(b[:])
				id = "silence-" + hex.EncodeToString(b[:])
			}
			actor, err := o.attributedActor(cmd, actorFlag)
			if err != nil {
				return err
			}
			now := time.Now().UTC()
			sl := events.Silence{ID: id, Match: m, Reason: reason, Actor: actor, Created: now, Until: now.Add(dur)}
			if err := notifier.ValidateSilence(sl); err != nil {
				return usageError("%v", err)
			}
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				if err := recordSilence(ctx, c, s, sl, "set"); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "silence %s until %s\n", id, sl.Until.Format(time.RFC3339))
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&match, "match", nil, "ATTR=GLOB the alerts must match (repeatable: all of them)")
	f.DurationVar(&dur, "for", 0, "how long the silence holds, e.g. 2h")
	f.StringVar(&reason, "reason", "", "why (required; audited)")
	f.StringVar(&id, "id", "", "the silence's id (default a random one)")
	f.StringVar(&actorFlag, "actor", operatorName(), "who silences, without an administrator's --nats-creds [VIGIL_ACTOR]")
	cmd.AddCommand(newSilenceListCmd(o), newSilenceLiftCmd(o))
	return cmd
}

// recordSilence stores sl and publishes it on VIGIL_EVENTS (audited).
func recordSilence(ctx context.Context, c *bus.Conn, s *notifier.Store, sl events.Silence, what string) error {
	subject := events.SilenceSubject(sl.Actor)
	env, err := events.New(events.TypeSilence, "vigil-cli", subject, sl)
	if err != nil {
		return err
	}
	env.ID = fmt.Sprintf("silence-%s-%s-%d", sl.ID, what, time.Now().UnixNano())
	if _, err := c.Publish(ctx, subject, env); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	if err := s.PutSilence(ctx, sl); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	return nil
}

func newSilenceListCmd(o *keyguardConn) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the silences in force (--all: the expired and lifted ones too)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				list, err := s.Silences(ctx)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
				fmt.Fprintln(tw, "ID\tUNTIL\tSTATE\tBY\tMATCH\tREASON")
				now := time.Now()
				for _, sl := range list {
					state := "active"
					switch {
					case sl.Lifted:
						state = "lifted"
					case !now.Before(sl.Until):
						state = "expired"
					}
					if state != "active" && !all {
						continue
					}
					var m []string
					for k, v := range sl.Match {
						m = append(m, k+"="+v)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", sl.ID, sl.Until.Format(time.RFC3339), state, sl.Actor, strings.Join(m, ","), sl.Reason)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "include expired and lifted silences")
	return cmd
}

func newSilenceLiftCmd(o *keyguardConn) *cobra.Command {
	var actorFlag string
	cmd := &cobra.Command{
		Use:   "lift ID",
		Short: "End a silence now (recorded on the bus)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			actor, err := o.attributedActor(cmd, actorFlag)
			if err != nil {
				return err
			}
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				list, err := s.Silences(ctx)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				for _, sl := range list {
					if sl.ID == args[0] {
						sl.Lifted, sl.Actor = true, actor
						if err := recordSilence(ctx, c, s, sl, "lift"); err != nil {
							return err
						}
						fmt.Fprintf(cmd.OutOrStdout(), "lifted %s\n", sl.ID)
						return nil
					}
				}
				return &exitError{code: 1, msg: fmt.Sprintf("no silence %s", args[0])}
			})
		},
	}
	cmd.Flags().StringVar(&actorFlag, "actor", operatorName(), "who lifts it, without an administrator's --nats-creds [VIGIL_ACTOR]")
	return cmd
}
