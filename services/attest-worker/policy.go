package attestworker

import (
	"context"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/policyfeed"
)

// policies holds the policy in force and the timing that follows from it.
// Policy changes are events (io.vigil.policy.v1 on
// vigil.events.policy.<id>.<actor>); every worker follows them (policyfeed), so a
// new version takes effect everywhere without a restart.
type policies struct {
	feed     *policyfeed.Feed
	explicit Timing // timing set in the configuration, which wins over the policy's
}

// newPolicies puts p in force and follows its published versions through
// js once feed.Follow runs; a version whose timing is unusable is refused.
func newPolicies(js jetstream.JetStream, p *appraise.Policy, explicit Timing, log *slog.Logger) (*policies, error) {
	ps := &policies{explicit: explicit}
	feed, err := policyfeed.New(js, p, policyfeed.WithLogger(log),
		policyfeed.WithCheck(func(p *appraise.Policy) error { _, err := ps.timingOf(p); return err }),
		policyfeed.WithOnChange(func(ctx context.Context, c policyfeed.Change) {
			t := ps.timing()
			log.InfoContext(ctx, "re-attestation timing", "policy", c.Policy.ID, "version", c.Policy.Version,
				"interval", t.Interval, "grace", t.Grace, "actor", c.Event.Actor)
		}))
	if err != nil {
		return nil, err
	}
	ps.feed = feed
	return ps, nil
}

// timingOf is the timing that p leads to, or an error when it is unusable.
func (ps *policies) timingOf(p *appraise.Policy) (Timing, error) {
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
		return Timing{}, err
	}
	return t, nil
}

func (ps *policies) policy() *appraise.Policy { return ps.feed.Policy() }

// timing is the timing of the policy in force (the feed puts no policy
// with an unusable timing in force).
func (ps *policies) timing() Timing {
	t, _ := ps.timingOf(ps.feed.Policy())
	return t
}
