package attestworker

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
)

// policyState is the policy in force and the timing that follows from it.
type policyState struct {
	policy *appraise.Policy
	timing Timing
}

// policies holds the policy in force. Policy changes are events
// (io.vigil.policy.v1 on vigil.events.policy.<id>); every worker follows
// them, so a new version takes effect everywhere without a restart.
type policies struct {
	cur      atomic.Pointer[policyState]
	explicit Timing // timing set in the configuration, which wins over the policy's
}

func newPolicies(p *appraise.Policy, explicit Timing) (*policies, error) {
	ps := &policies{explicit: explicit}
	if err := ps.set(p); err != nil {
		return nil, err
	}
	return ps, nil
}

// set puts p in force, unless the timing it leads to is unusable.
func (ps *policies) set(p *appraise.Policy) error {
	t := ps.explicit
	pt := policyTiming(p)
	if t.Interval <= 0 {
		t.Interval = pt.Interval
	}
	if t.Grace <= 0 {
		t.Grace = pt.Grace
	}
	t = t.withDefaults()
	if err := t.validate(); err != nil {
		return err
	}
	ps.cur.Store(&policyState{policy: p, timing: t})
	return nil
}

func (ps *policies) policy() *appraise.Policy { return ps.cur.Load().policy }
func (ps *policies) timing() Timing           { return ps.cur.Load().timing }

// followPolicy applies every newer version of the policy published on
// vigil.events.policy.<id> until ctx ends, starting with the latest one
// stored.
func (w *Worker) followPolicy(ctx context.Context) error {
	id := w.policies.policy().ID
	if id == "" {
		return nil
	}
	subject := events.PolicySubject(id)
	pause := func() {
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	for ctx.Err() == nil {
		cons, err := w.conn.JS.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
			FilterSubjects: []string{subject},
			DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		})
		if err != nil {
			w.log.WarnContext(ctx, "cannot follow policy changes; retrying", "subject", subject, "err", err)
			pause()
			continue
		}
		it, err := cons.Messages()
		if err != nil {
			w.log.WarnContext(ctx, "policy follower", "err", err)
			pause()
			continue
		}
		stop := context.AfterFunc(ctx, it.Stop)
		for {
			m, err := it.Next()
			if err != nil {
				if ctx.Err() == nil {
					w.log.WarnContext(ctx, "policy follower", "err", err)
				}
				break
			}
			w.applyPolicyEvent(ctx, m.Data())
		}
		stop()
		it.Stop()
		pause()
	}
	return nil
}

// applyPolicyEvent takes a policy version into force if it is newer than
// the one in force and valid.
func (w *Worker) applyPolicyEvent(ctx context.Context, data []byte) {
	env, err := events.Parse(data)
	if err != nil {
		w.log.WarnContext(ctx, "unreadable policy event", "err", err)
		return
	}
	var pe events.Policy
	if err := env.Decode(events.TypePolicy, &pe); err != nil {
		w.log.WarnContext(ctx, "unreadable policy event", "id", env.ID, "err", err)
		return
	}
	cur := w.policies.policy()
	if pe.Version <= cur.Version {
		return
	}
	p, err := appraise.ParsePolicy([]byte(pe.Document))
	if err != nil {
		w.log.ErrorContext(ctx, "policy version rejected; keeping the one in force", "policy", pe.Name, "version", pe.Version, "in_force", cur.Version, "err", err)
		return
	}
	if p.ID != cur.ID || p.Version != pe.Version {
		w.log.ErrorContext(ctx, "policy event does not match its document; keeping the one in force",
			"event_name", pe.Name, "event_version", pe.Version, "document_id", p.ID, "document_version", p.Version)
		return
	}
	if err := w.policies.set(p); err != nil {
		w.log.ErrorContext(ctx, "policy version rejected; keeping the one in force", "policy", p.ID, "version", p.Version, "err", err)
		return
	}
	t := w.policies.timing()
	w.log.InfoContext(ctx, "policy version in force", "policy", p.ID, "version", p.Version, "previous", cur.Version,
		"interval", t.Interval, "grace", t.Grace, "actor", pe.Actor, "reason", pe.Reason)
}
