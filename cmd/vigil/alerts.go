package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func newAlertsCmd() *cobra.Command {
	o := &keyguardConn{}
	cmd := &cobra.Command{
		Use:   "alerts",
		Short: "Manage alert subscriptions, dead letters and silences; receive alerts",
		Long: `The notifier (vigil-notifier) delivers Vigil's alerts to subscriptions: a webhook
(CloudEvents, Standard Webhooks signatures), Slack, Microsoft Teams, PagerDuty or an
Alertmanager. Subscriptions, silences and replays are an administrator's acts (in operator
mode, --nats-creds names the administrator); sink URLs and secrets are sealed to the
notifier's key and never shown again. See docs/alerts.md.`,
	}
	o.flags(cmd)
	cmd.AddCommand(newAlertsSubscribeCmd(o), newAlertsListCmd(o), newAlertsShowCmd(o), newAlertsDeleteCmd(o),
		newAlertsPauseCmd(o, true), newAlertsPauseCmd(o, false), newAlertsTestCmd(o), newAlertsDLQCmd(o),
		newAlertsSilenceCmd(o), newAlertsReceiveCmd())
	return cmd
}

// withAlertsStore runs f within --timeout with a connection (o's) and the
// notifier's store, and closes the connection after.
func withAlertsStore(ctx context.Context, o *keyguardConn, f func(ctx context.Context, c *bus.Conn, s *notifier.Store) error) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	c, err := o.connect(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	s, err := notifier.OpenStore(ctx, c.JS)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	return f(ctx, c, s)
}

// keyValues parses repeated k=v flags.
func keyValues(flag string, vs []string) (map[string]string, error) {
	if len(vs) == 0 {
		return nil, nil
	}
	m := map[string]string{}
	for _, v := range vs {
		k, val, ok := strings.Cut(v, "=")
		if !ok || k == "" {
			return nil, usageError("--%s %q: want NAME=VALUE", flag, v)
		}
		m[k] = val
	}
	return m, nil
}

type subscribeFlags struct {
	id, url, protocol, description, origin, filterJSON, actor string
	settings, secrets, codes, tags                            []string
	bearer, routingKey, severity, vm, vmName, rg              string
	rateLimit                                                 float64
	allowPrivate, noHandshake                                 bool
}

func (f *subscribeFlags) filters() ([]notifier.Filter, error) {
	var out []notifier.Filter
	if f.filterJSON != "" {
		var fl notifier.Filter
		if err := json.Unmarshal([]byte(f.filterJSON), &fl); err != nil {
			return nil, usageError("--filter: %v", err)
		}
		out = append(out, fl)
	}
	if f.severity != "" {
		out = append(out, notifier.Filter{SeverityAtLeast: events.Severity(f.severity)})
	}
	if len(f.codes) > 0 {
		var any []notifier.Filter
		for _, c := range f.codes {
			any = append(any, notifier.Filter{Exact: map[string]string{notifier.AttrCode: c}})
		}
		out = append(out, notifier.Filter{Any: any})
	}
	glob := map[string]string{}
	if f.vm != "" {
		glob[notifier.AttrVM] = f.vm
	}
	if f.vmName != "" {
		glob[notifier.AttrVMName] = f.vmName
	}
	if f.rg != "" {
		glob[notifier.AttrResourceGroup] = f.rg
	}
	tags, err := keyValues("tag", f.tags)
	if err != nil {
		return nil, err
	}
	for k, v := range tags {
		glob[notifier.AttrTagPrefix+k] = v
	}
	if len(glob) > 0 {
		out = append(out, notifier.Filter{Glob: glob})
	}
	for i, fl := range out {
		if err := fl.Validate(); err != nil {
			return nil, usageError("filter %d: %v", i, err)
		}
	}
	return out, nil
}

func newAlertsSubscribeCmd(o *keyguardConn) *cobra.Command {
	f := &subscribeFlags{}
	cmd := &cobra.Command{
		Use:   "subscribe",
		Short: "Subscribe a sink to alerts (its URL and secrets are sealed to the notifier's key, never shown again)",
		Example: `  vigil alerts subscribe --id secops --protocol webhook --sink https://hooks.example.com/vigil \
      --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw --severity high
  vigil alerts subscribe --id chat --protocol slack --sink https://hooks.slack.com/services/T/B/X --code vm.untrusted --code vm.stale
  vigil alerts subscribe --id pager --protocol pagerduty --routing-key R0UT1NGKEY --severity critical --vm-name 'prod-*'
  vigil alerts subscribe --id am --protocol alertmanager --sink https://alertmanager.example.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !notifier.ValidID(f.id) {
				return usageError("--id %q: lower case letters, digits, - and _, at most 63", f.id)
			}
			// Secrets from the environment keep them out of the process
			// list and the shell's history.
			if len(f.secrets) == 0 && os.Getenv("VIGIL_WEBHOOK_SECRET") != "" {
				f.secrets = []string{os.Getenv("VIGIL_WEBHOOK_SECRET")}
			}
			if f.bearer == "" {
				f.bearer = os.Getenv("VIGIL_SINK_BEARER_TOKEN")
			}
			if f.routingKey == "" {
				f.routingKey = os.Getenv("VIGIL_PAGERDUTY_ROUTING_KEY")
			}
			settings, err := keyValues("setting", f.settings)
			if err != nil {
				return err
			}
			filters, err := f.filters()
			if err != nil {
				return err
			}
			actor, err := o.attributedActor(cmd, f.actor)
			if err != nil {
				return err
			}
			origin := f.origin
			if f.noHandshake {
				origin = ""
			}
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				client := sink.NewClient(sink.ClientOptions{AllowPrivate: f.allowPrivate, UserAgent: "vigil-cli"})
				sub, err := s.Subscribe(ctx, notifier.Request{ID: f.id, Description: f.description, Protocol: f.protocol, URL: f.url,
					Settings: settings, Filters: filters, RateLimit: f.rateLimit, Actor: actor, Origin: origin,
					Secrets: sink.Secrets{WebhookSecrets: f.secrets, BearerToken: f.bearer, RoutingKey: f.routingKey}}, client)
				if errors.Is(err, notifier.ErrInvalid) || errors.Is(err, sink.ErrInvalidSpec) || errors.Is(err, sink.ErrRefused) {
					return &exitError{code: 2, msg: err.Error()}
				}
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "subscribed %s: %s to %s\n", sub.ID, sub.Protocol, sub.Sink)
				return nil
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.id, "id", "", "the subscription's id (required): lower case letters, digits, - and _")
	fl.StringVar(&f.url, "sink", "", "the sink's URL (PagerDuty: default its Events API v2; Alertmanager: its base URL)")
	fl.StringVar(&f.protocol, "protocol", sink.ProtocolWebhook, "webhook, slack, teams, pagerduty or alertmanager")
	fl.StringVar(&f.description, "description", "", "what the subscription is for")
	fl.StringArrayVar(&f.settings, "setting", nil, "a protocol setting NAME=VALUE (repeatable; docs/alerts.md)")
	fl.StringArrayVar(&f.secrets, "secret", nil, "a Standard Webhooks secret whsec_... (webhook; up to two during a rotation) [VIGIL_WEBHOOK_SECRET]")
	fl.StringVar(&f.bearer, "bearer-token", "", "sent as Authorization: Bearer (webhook, alertmanager) [VIGIL_SINK_BEARER_TOKEN]")
	fl.StringVar(&f.routingKey, "routing-key", "", "PagerDuty's integration key [VIGIL_PAGERDUTY_ROUTING_KEY]")
	fl.StringVar(&f.severity, "severity", "", "deliver alerts of this severity and above: info, warning, high, critical")
	fl.StringArrayVar(&f.codes, "code", nil, "deliver alerts with this code (repeatable: any of them)")
	fl.StringVar(&f.vm, "vm", "", "deliver alerts of VMs whose key matches this glob")
	fl.StringVar(&f.vmName, "vm-name", "", "deliver alerts of VMs whose name matches this glob")
	fl.StringVar(&f.rg, "resource-group", "", "deliver alerts of VMs in resource groups matching this glob")
	fl.StringArrayVar(&f.tags, "tag", nil, "deliver alerts of VMs with Azure tag NAME=GLOB (repeatable)")
	fl.StringVar(&f.filterJSON, "filter", "", `a filter in the CloudEvents Subscriptions API dialects, JSON, e.g. '{"any":[{"prefix":{"code":"vm."}},{"exact":{"severity":"critical"}}]}'`)
	fl.Float64Var(&f.rateLimit, "rate-limit", 0, "most deliveries per second, more go as digests (default: Slack and Teams 1, others none)")
	fl.StringVar(&f.origin, "origin", "vigil", "WebHook-Request-Origin of the webhook validation handshake")
	fl.BoolVar(&f.noHandshake, "no-handshake", false, "skip the CloudEvents webhook validation handshake")
	fl.BoolVar(&f.allowPrivate, "allow-private-sinks", false, "let the sink be http and resolve to a private, loopback or link-local address (dev and tests; the notifier must allow it too)")
	fl.StringVar(&f.actor, "actor", operatorName(), "who subscribes, without an administrator's --nats-creds [VIGIL_ACTOR]")
	return cmd
}

// subscriptionView is a subscription with its health, as list and show
// print it (never a secret: they are sealed).
type subscriptionView struct {
	notifier.Subscription
	Sealed  any             `json:"sealed,omitempty"` // hidden
	Health  notifier.Health `json:"health"`
	Backlog *uint64         `json:"backlog,omitempty"`
}

func viewOf(ctx context.Context, c *bus.Conn, s *notifier.Store, sub notifier.Subscription) (subscriptionView, error) {
	v := subscriptionView{Subscription: sub}
	h, err := s.Health(ctx, sub.ID)
	if err != nil {
		return v, err
	}
	v.Health = h
	if cons, err := c.JS.Consumer(ctx, events.StreamAlerts, sub.Durable()); err == nil {
		if info, err := cons.Info(ctx); err == nil {
			n := info.NumPending + uint64(info.NumAckPending)
			v.Backlog = &n
		}
	}
	return v, nil
}

func (v subscriptionView) state() string {
	switch {
	case v.Paused:
		return "paused"
	case v.Health.Disabled && v.Health.DisabledAt.After(v.ResumedAt):
		return "disabled (410)"
	case v.Health.Unhealthy:
		return "unhealthy"
	case v.Health.ConsecutiveFailures > 0:
		return "failing"
	}
	return "active"
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return time.Since(t).Round(time.Second).String() + " ago"
}

func newAlertsListCmd(o *keyguardConn) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List subscriptions with their health: last delivery, last error, consecutive failures, backlog",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				subs, err := s.Subscriptions(ctx)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				w := cmd.OutOrStdout()
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				if !asJSON {
					fmt.Fprintln(tw, "ID\tPROTOCOL\tSINK\tSTATE\tLAST DELIVERY\tFAILURES\tBACKLOG\tLAST ERROR")
				}
				for _, sub := range subs {
					v, err := viewOf(ctx, c, s, sub)
					if err != nil {
						return &exitError{code: 1, msg: err.Error()}
					}
					if asJSON {
						if err := json.NewEncoder(w).Encode(v); err != nil {
							return err
						}
						continue
					}
					backlog := "-"
					if v.Backlog != nil {
						backlog = fmt.Sprint(*v.Backlog)
					}
					lastErr := v.Health.LastError
					if len(lastErr) > 60 {
						lastErr = lastErr[:60] + "..."
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", v.ID, v.Protocol, v.Sink, v.state(), ago(v.Health.LastDelivery),
						v.Health.ConsecutiveFailures, backlog, lastErr)
				}
				return tw.Flush()
			})
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "one JSON object per subscription")
	return cmd
}

func newAlertsShowCmd(o *keyguardConn) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Print a subscription and its health as JSON (its sink URL redacted, its secrets never)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				sub, _, err := s.Subscription(ctx, args[0])
				if err != nil {
					return notFoundOr1(err)
				}
				v, err := viewOf(ctx, c, s, sub)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			})
		},
	}
}

func notFoundOr1(err error) error {
	return &exitError{code: 1, msg: err.Error()}
}

func newAlertsDeleteCmd(o *keyguardConn) *cobra.Command {
	return &cobra.Command{
		Use:   "delete ID",
		Short: "Delete a subscription (the notifier deletes its consumer; its history stays in the bucket)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				if err := s.DeleteSubscription(ctx, args[0]); err != nil {
					return notFoundOr1(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "deleted %s\n", args[0])
				return nil
			})
		},
	}
}

func newAlertsPauseCmd(o *keyguardConn, pause bool) *cobra.Command {
	use, short := "pause ID", "Hold a subscription's deliveries (alerts wait on the bus)"
	if !pause {
		use, short = "resume ID", "Deliver again: a paused subscription, or one disabled by its sink's 410 Gone"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				_, err := s.UpdateSubscription(ctx, args[0], func(sub *notifier.Subscription) error {
					sub.Paused = pause
					if !pause {
						sub.ResumedAt = time.Now().UTC()
					}
					return nil
				})
				if err != nil {
					return notFoundOr1(err)
				}
				verb := "paused"
				if !pause {
					verb = "resumed"
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", verb, args[0])
				return nil
			})
		},
	}
}

// replay asks the notifier to deliver dl to its subscription.
func replay(ctx context.Context, c *bus.Conn, dl notifier.DeadLetter) error {
	subject := events.AlertReplaySubject(dl.Subscription)
	env, err := events.New(notifier.TypeReplay, "vigil-cli", subject, dl)
	if err != nil {
		return err
	}
	_, err = c.Publish(ctx, subject, env)
	return err
}

func newAlertsTestCmd(o *keyguardConn) *cobra.Command {
	return &cobra.Command{
		Use:   "test ID",
		Short: "Send a test notification through the notifier to a subscription's sink and report the outcome",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAlertsStore(cmd.Context(), o, func(ctx context.Context, c *bus.Conn, s *notifier.Store) error {
				id := args[0]
				if _, _, err := s.Subscription(ctx, id); err != nil {
					return notFoundOr1(err)
				}
				before, err := s.Health(ctx, id)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				var rnd [8]byte
				_, _ = rand.Read(rnd[:])
				now := time.Now().UTC()
				n := sink.Notification{ID: "test-" + hex.EncodeToString(rnd[:]), Key: "vigil.test/" + id, State: sink.Firing, Time: now, Source: "/vigil/cli",
					Alert: events.Alert{Severity: events.SeverityInfo, Code: "vigil.test", Message: "test notification from vigil alerts test", Source: "vigil-cli", At: now}}
				if err := replay(ctx, c, notifier.DeadLetter{Subscription: id, Notification: n, At: now}); err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				for {
					h, err := s.Health(ctx, id)
					switch {
					case err != nil:
						return &exitError{code: 1, msg: err.Error()}
					case h.LastDelivery.After(before.LastDelivery) && !h.LastDelivery.Before(now):
						fmt.Fprintf(cmd.OutOrStdout(), "delivered test notification %s to %s\n", n.ID, id)
						return nil
					case h.LastErrorAt.After(before.LastErrorAt) && !h.LastErrorAt.Before(now):
						return &exitError{code: 1, msg: fmt.Sprintf("the sink of %s failed: %s (the notifier retries it)", id, h.LastError)}
					}
					select {
					case <-ctx.Done():
						return &exitError{code: 1, msg: fmt.Sprintf("no outcome within --timeout: is vigil-notifier running, and %s active (vigil alerts list)?", id)}
					case <-time.After(100 * time.Millisecond):
					}
				}
			})
		},
	}
}

func newAlertsDLQCmd(o *keyguardConn) *cobra.Command {
	cmd := &cobra.Command{Use: "dlq", Short: "The alerts the notifier gave up delivering (VIGIL_ALERTS_DLQ)"}
	var sub string
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, of every subscription or one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			dls, err := deadLetters(ctx, c, sub, nil)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			return printDeadLetters(cmd.OutOrStdout(), dls, asJSON)
		},
	}
	list.Flags().StringVar(&sub, "subscription", "", "only this subscription's")
	list.Flags().BoolVar(&asJSON, "json", false, "one JSON object per dead letter")
	var rsub string
	var seqFlags []uint
	rep := &cobra.Command{
		Use:   "replay",
		Short: "Deliver dead letters again (all of a subscription, or those of --seq)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var seqs []uint64
			for _, s := range seqFlags {
				seqs = append(seqs, uint64(s))
			}
			if rsub == "" && len(seqs) == 0 {
				return usageError("name --subscription or --seq")
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			dls, err := deadLetters(ctx, c, rsub, seqs)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			for _, d := range dls {
				if err := replay(ctx, c, d.DeadLetter); err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				fmt.Fprintf(cmd.OutOrStdout(), "replaying %d (%s) to %s\n", d.Seq, d.Notification.ID, d.Subscription)
			}
			if len(dls) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no dead letters")
			}
			return nil
		},
	}
	rep.Flags().StringVar(&rsub, "subscription", "", "replay this subscription's dead letters")
	rep.Flags().UintSliceVar(&seqFlags, "seq", nil, "replay these dead letters (their sequence, from dlq list)")
	cmd.AddCommand(list, rep)
	return cmd
}

type seqDeadLetter struct {
	Seq uint64 `json:"seq"`
	notifier.DeadLetter
}

// deadLetters reads VIGIL_ALERTS_DLQ's dead letters by sequence, of sub
// (all when ""), of seqs (all when none).
func deadLetters(ctx context.Context, c *bus.Conn, sub string, seqs []uint64) ([]seqDeadLetter, error) {
	s, err := c.JS.Stream(ctx, events.StreamAlertsDLQ)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	var out []seqDeadLetter
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		if len(seqs) > 0 && !containsSeq(seqs, seq) {
			continue
		}
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		if !strings.HasPrefix(m.Subject, "vigil.alertdlq.dead.") || sub != "" && m.Subject != events.AlertDLQSubject(sub) {
			continue
		}
		env, err := events.Parse(m.Data)
		if err != nil {
			continue
		}
		var dl notifier.DeadLetter
		if env.Decode(notifier.TypeDeadLetter, &dl) != nil {
			continue
		}
		out = append(out, seqDeadLetter{Seq: seq, DeadLetter: dl})
	}
	return out, nil
}

func containsSeq(seqs []uint64, s uint64) bool {
	for _, v := range seqs {
		if v == s {
			return true
		}
	}
	return false
}

func printDeadLetters(w io.Writer, dls []seqDeadLetter, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		for _, d := range dls {
			if err := enc.Encode(d); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tSUBSCRIPTION\tAT\tCODE\tVM\tSTATUS\tERROR")
	for _, d := range dls {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", d.Seq, d.Subscription, d.At.Format(time.RFC3339), d.Notification.Alert.Code,
			d.Notification.Alert.VMKey, d.Status, d.Error)
	}
	return tw.Flush()
}
