package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
)

func newPolicyCmd() *cobra.Command {
	o := &keyguardConn{}
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Publish and show attestation policy versions",
		Long: `An attestation policy (YAML, see "vigil evidence policy") is versioned. Publishing a new
version stores it on the bus as io.vigil.policy.v1 on vigil.events.policy.<id>.<actor>,
where the actor is the administrator named in --nats-creds (the server lets no one else
publish there) or, without credentials, --actor: every
attest-worker and keyguard that runs a policy with that id puts it in force without a
restart (keyguard for the evidence of key releases), and the
auditor logs the change (who, why, the document and its digest).`,
	}
	o.flags(cmd)
	cmd.AddCommand(newPolicyPublishCmd(o), newPolicyShowCmd(o))
	return cmd
}

func newPolicyPublishCmd(o *keyguardConn) *cobra.Command {
	var reason, actorFlag string
	cmd := &cobra.Command{
		Use:   "publish FILE",
		Short: "Publish a new version of a policy (its version must be higher than the one stored)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if reason == "" {
				return usageError("--reason is required: every policy change is audited")
			}
			doc, err := os.ReadFile(args[0])
			if err != nil {
				return &exitError{code: 2, msg: err.Error()}
			}
			p, err := appraise.ParsePolicy(doc)
			if err != nil {
				return &exitError{code: 2, msg: fmt.Sprintf("%s: %v", args[0], err)}
			}
			if p.ID == "" || p.Version <= 0 {
				return &exitError{code: 2, msg: fmt.Sprintf("%s: a published policy needs an id and a positive version", args[0])}
			}
			actor, err := o.attributedActor(cmd, actorFlag)
			if err != nil {
				return err
			}
			subject := events.PolicySubject(p.ID, actor)
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			stored, err := latestPolicy(ctx, c, p.ID)
			switch {
			case err == nil && stored.Version >= p.Version:
				return &exitError{code: 1, msg: fmt.Sprintf("policy %s version %d is stored already; publish a higher version than %d", p.ID, stored.Version, p.Version)}
			case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
				return &exitError{code: 1, msg: err.Error()}
			}
			sum := sha256.Sum256(doc)
			ev := events.Policy{Name: p.ID, Version: p.Version, Digest: "sha256:" + hex.EncodeToString(sum[:]),
				Document: string(doc), Actor: actor, Reason: reason, At: time.Now().UTC()}
			env, err := events.New(events.TypePolicy, "vigil-cli", subject, ev)
			if err != nil {
				return err
			}
			// One id per policy version: publishing the same version twice
			// stores it once.
			env.ID = fmt.Sprintf("policy-%s-v%d", p.ID, p.Version)
			if _, err := c.Publish(ctx, subject, env); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "published policy %s version %d (%s) on %s\n", p.ID, p.Version, ev.Digest, subject)
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why the policy changes (required; audited)")
	cmd.Flags().StringVar(&actorFlag, "actor", operatorName(), "who publishes, without an administrator's --nats-creds (whose name it must otherwise be); a subject token [VIGIL_ACTOR]")
	return cmd
}

func newPolicyShowCmd(o *keyguardConn) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Print the latest published version of a policy",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), o.timeout)
			defer cancel()
			c, err := o.connect(ctx)
			if err != nil {
				return err
			}
			defer c.Close()
			p, err := latestPolicy(ctx, c, args[0])
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return &exitError{code: 1, msg: fmt.Sprintf("no version of policy %q was published", args[0])}
			}
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "# policy %s version %d, %s, published %s by %s: %s\n%s",
				p.Name, p.Version, p.Digest, p.At.Format(time.RFC3339), p.Actor, p.Reason, p.Document)
			return nil
		},
	}
}

// latestPolicy reads the newest stored version of policy id, whoever
// published it (vigil.events.policy.<id>.*). The actor of the result is
// the subject's, not the payload's.
func latestPolicy(ctx context.Context, c *bus.Conn, id string) (events.Policy, error) {
	s, err := c.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		return events.Policy{}, err
	}
	m, err := s.GetLastMsgForSubject(ctx, events.PolicyVersionsFilter(id))
	if err != nil {
		return events.Policy{}, err
	}
	env, err := events.Parse(m.Data)
	if err != nil {
		return events.Policy{}, err
	}
	var p events.Policy
	if err := env.Decode(events.TypePolicy, &p); err != nil {
		return events.Policy{}, err
	}
	p.Actor = events.PolicyActorFromSubject(m.Subject)
	return p, nil
}
