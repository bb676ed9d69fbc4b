// Package policyfeed keeps the attestation policy in force up to date with
// the versions published on the bus.
//
// A policy version is published as io.vigil.policy.v1 on
// vigil.events.policy.<policy id>.<actor> (vigil policy publish), where
// actor is the publisher; in operator mode the server pins it to the
// administrator's name (busauth.AdminPolicySubject). A Feed starts with the
// policy a service is configured with and follows
// vigil.events.policy.<policy id>.* with an ordered consumer, from the
// newest stored version on. The actor recorded for a version (the log
// line's and Change.Event.Actor) is the subject's last token, never the
// payload's. Versions stored on the unpinned vigil.events.policy.<policy id>
// of earlier releases are not read. A version
// takes effect when it is newer than the one in force, its document
// parses, and the document's id and version are the feed's id and the
// version its event names (and the optional check accepts it). Anything
// else is logged and changes nothing, so the policy in force never goes
// back to an older version.
//
//	feed, err := policyfeed.New(js, configured, policyfeed.WithLogger(log))
//	if err != nil {
//		return err
//	}
//	svc.Go("policy", feed.Follow)
//	// at each use, the policy in force:
//	verdict, res, err := appraise.Evidence(ctx, v, bundle, exp, feed.Policy(), opts)
package policyfeed

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
)

// DefaultRetryWait is how long Follow waits before it tries again when
// NATS cannot be reached.
const DefaultRetryWait = 2 * time.Second

// Feed is the policy in force: the configured one, then each newer valid
// version published on the bus. Its methods are safe for concurrent use.
type Feed struct {
	js      jetstream.JetStream
	opts    options
	cur     atomic.Pointer[appraise.Policy]
	synced  chan struct{}
	syncOne sync.Once
}

// Change is a policy version put in force.
type Change struct {
	// Previous is the policy that was in force.
	Previous *appraise.Policy
	// Policy is the one in force now.
	Policy *appraise.Policy
	// Event is the published version: who published it, why, when. Its
	// Actor is the subject's actor token, whatever the payload said.
	Event events.Policy
}

type options struct {
	check     func(*appraise.Policy) error
	onChange  func(context.Context, Change)
	log       *slog.Logger
	retryWait time.Duration
}

// Option configures a Feed.
type Option func(*options)

// WithCheck refuses a version for which check returns an error (a version
// the service cannot run with), as well as the initial policy: New returns
// the error.
func WithCheck(check func(*appraise.Policy) error) Option {
	return func(o *options) { o.check = check }
}

// WithOnChange calls f after each version is put in force, on the
// following goroutine.
func WithOnChange(f func(ctx context.Context, c Change)) Option {
	return func(o *options) { o.onChange = f }
}

// WithLogger sets the logger for versions put in force or refused and for
// bus errors (default slog.Default()).
func WithLogger(log *slog.Logger) Option {
	return func(o *options) { o.log = log }
}

// WithRetryWait sets how long Follow waits before it tries again after a
// bus error (default DefaultRetryWait).
func WithRetryWait(d time.Duration) Option {
	return func(o *options) { o.retryWait = d }
}

// New returns a Feed with initial in force, which follows the versions of
// initial's id published through js once Follow runs.
func New(js jetstream.JetStream, initial *appraise.Policy, opts ...Option) (*Feed, error) {
	if initial == nil {
		return nil, errors.New("policyfeed: no initial policy")
	}
	f := &Feed{js: js, synced: make(chan struct{})}
	for _, o := range opts {
		o(&f.opts)
	}
	if f.opts.log == nil {
		f.opts.log = slog.Default()
	}
	if f.opts.retryWait <= 0 {
		f.opts.retryWait = DefaultRetryWait
	}
	if f.opts.check != nil {
		if err := f.opts.check(initial); err != nil {
			return nil, fmt.Errorf("policyfeed: policy %s version %d: %w", initial.ID, initial.Version, err)
		}
	}
	f.cur.Store(initial)
	if initial.ID == "" {
		f.markSynced() // nothing to follow
	}
	return f, nil
}

// Policy returns the policy in force.
func (f *Feed) Policy() *appraise.Policy { return f.cur.Load() }

// Synced is closed once the feed has read the newest version stored when
// Follow started (or found none), so that Policy no longer returns a
// policy the bus already superseded.
func (f *Feed) Synced() <-chan struct{} { return f.synced }

func (f *Feed) markSynced() { f.syncOne.Do(func() { close(f.synced) }) }

// Follow puts every newer valid version published on
// vigil.events.policy.<id>.* in force until ctx ends, starting with the
// newest one stored. Bus errors are logged and retried. It returns nil
// when ctx ends, and at once when the policy has no id. Run one Follow per
// Feed.
func (f *Feed) Follow(ctx context.Context) error {
	id := f.Policy().ID
	if id == "" {
		return nil
	}
	subject := events.PolicyVersionsFilter(id)
	log := f.opts.log.With("subject", subject)
	for ctx.Err() == nil {
		if err := f.follow(ctx, subject); err != nil && ctx.Err() == nil {
			log.WarnContext(ctx, "cannot follow policy versions; retrying", "retry_in", f.opts.retryWait, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(f.opts.retryWait):
		}
	}
	return nil
}

// follow reads subject with a new ordered consumer until an error or the
// end of ctx.
func (f *Feed) follow(ctx context.Context, subject string) error {
	cons, err := f.js.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{subject},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return err
	}
	it, err := cons.Messages()
	if err != nil {
		return err
	}
	defer it.Stop()
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 {
		f.markSynced()
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		m, err := it.Next()
		if err != nil {
			return err
		}
		f.apply(ctx, m.Subject(), m.Data())
		if md, err := m.Metadata(); err == nil && md.NumPending == 0 {
			f.markSynced()
		}
	}
}

// apply puts the version in data, published on subject, in force if it is
// newer than the one in force and valid.
func (f *Feed) apply(ctx context.Context, subject string, data []byte) {
	log := f.opts.log
	env, err := events.Parse(data)
	if err != nil {
		log.WarnContext(ctx, "unreadable policy event", "err", err)
		return
	}
	var pe events.Policy
	if err := env.Decode(events.TypePolicy, &pe); err != nil {
		log.WarnContext(ctx, "unreadable policy event", "id", env.ID, "err", err)
		return
	}
	actor := events.PolicyActorFromSubject(subject)
	if actor == "" {
		log.WarnContext(ctx, "policy event without an actor token; ignored", "id", env.ID, "subject", subject)
		return
	}
	if pe.Actor != "" && pe.Actor != actor {
		log.WarnContext(ctx, "policy event's payload names another actor than its subject; recording the subject's",
			"id", env.ID, "actor", actor, "payload_actor", pe.Actor)
	}
	pe.Actor = actor
	cur := f.Policy()
	if pe.Version <= cur.Version {
		return
	}
	p, err := appraise.ParsePolicy([]byte(pe.Document))
	if err != nil {
		log.ErrorContext(ctx, "policy version rejected; keeping the one in force", "policy", pe.Name, "version", pe.Version, "in_force", cur.Version, "err", err)
		return
	}
	if pe.Name != cur.ID || p.ID != cur.ID || p.Version != pe.Version {
		log.ErrorContext(ctx, "policy event does not match its document; keeping the one in force", "policy", cur.ID,
			"event_name", pe.Name, "event_version", pe.Version, "document_id", p.ID, "document_version", p.Version)
		return
	}
	if f.opts.check != nil {
		if err := f.opts.check(p); err != nil {
			log.ErrorContext(ctx, "policy version rejected; keeping the one in force", "policy", p.ID, "version", p.Version, "in_force", cur.Version, "err", err)
			return
		}
	}
	f.cur.Store(p)
	log.InfoContext(ctx, "policy version in force", "policy", p.ID, "version", p.Version, "previous", cur.Version,
		"actor", pe.Actor, "reason", pe.Reason)
	if f.opts.onChange != nil {
		f.opts.onChange(ctx, Change{Previous: cur, Policy: p, Event: pe})
	}
}
