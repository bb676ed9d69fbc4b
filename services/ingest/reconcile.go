package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"golang.org/x/sync/errgroup"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// Lister lists every VM of a subscription with its power state; *arm.Client
// is one.
type Lister interface {
	ListAll(ctx context.Context, subscription string) ([]*armcompute.VirtualMachine, error)
}

// reconciler compares ARM's list of VMs with the inventory and heals what
// events missed: VMs created or deleted without an event reaching Vigil,
// power-state changes (a missed stop, deallocate or start) and changed
// Azure tags (recorded without a lifecycle event). Enrichment
// that a restart lost (the inventory's newest event is newer than its last
// enrichment) is requested again.
type reconciler struct {
	p     *processor
	list  Lister
	subs  []string
	grace time.Duration // changes younger than this are left to their events
	log   *slog.Logger
	// kick asks for the next pass sooner: a VM came to wait for its
	// enrichment's read behind many others, and one list page shows
	// 1,000 of them.
	kick chan struct{}
	// kickGap is the least time between the starts of two passes a
	// backlog asked for (defaultKickGap).
	kickGap time.Duration
}

// Reconcile pacing beside the interval.
const (
	// reconcileConcurrency bounds the VMs of a pass healed at once.
	reconcileConcurrency = 32
	// listBacklog: a VM queued for its enrichment's read behind this many
	// (5 s of a subscription's default read budget) asks for a pass
	// sooner, so that its vmId (its first attestation waits for it) and
	// tags come from the list rather than from its read. A backlog the
	// last pass saw, with nothing new queued, asks for nothing more.
	listBacklog = 100
	// defaultKickGap is the least time between the starts of two passes
	// a backlog asked for.
	defaultKickGap = 15 * time.Second
)

func newReconciler(p *processor, list Lister, subs []string, grace time.Duration, log *slog.Logger) *reconciler {
	return &reconciler{p: p, list: list, subs: subs, grace: grace, log: log, kick: make(chan struct{}, 1), kickGap: defaultKickGap}
}

// queued is told of a VM newly queued for its enrichment's read, with
// pending VMs waiting or in flight; when they are listBacklog or more, it
// asks for a pass within r.kickGap of the last one's start instead of at
// the interval.
func (r *reconciler) queued(pending int) {
	if pending < listBacklog {
		return
	}
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// run reconciles every subscription once.
func (r *reconciler) run(ctx context.Context) error {
	records, err := r.p.inv.all(ctx)
	if err != nil {
		r.p.m.reconcile("error")
		return err
	}
	var errs []error
	for _, sub := range r.subs {
		if err := r.subscription(ctx, sub, records); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		r.p.m.reconcile("error")
		return err
	}
	r.p.m.reconcile("ok")
	return nil
}

func (r *reconciler) subscription(ctx context.Context, sub string, records map[string]record) error {
	start := time.Now().UTC()
	vms, err := r.list.ListAll(ctx, sub)
	if err != nil {
		return fmt.Errorf("reconcile subscription %s: %w", sub, err)
	}
	cutoff := start.Add(-r.grace)
	seen := map[string]bool{}
	var (
		mu   sync.Mutex
		errs []error
		g    errgroup.Group
	)
	// Each VM's healing is its own compare-and-set: they go concurrently,
	// within reconcileConcurrency (20,000 VMs one after the other took 38 s
	// of round trips).
	g.SetLimit(reconcileConcurrency)
	for _, m := range vms {
		if m == nil || m.ID == nil {
			continue
		}
		id, _, err := normalize.ParseVMID(*m.ID)
		if err != nil {
			continue
		}
		key := id.Key()
		seen[key] = true
		rec := records[key]
		g.Go(func() error {
			if err := r.vm(ctx, id, m, rec, start, cutoff); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait()
	for key, rec := range records {
		if seen[key] || rec.VM.Deleted || !strings.EqualFold(rec.VM.Subscription, sub) {
			continue
		}
		if !rec.VM.EventTime.Before(cutoff) {
			continue // too recent: ARM's list may not show it yet
		}
		id, _, err := normalize.ParseVMID(rec.VM.ResourceID)
		if err != nil {
			continue
		}
		err = r.p.heal(ctx, id, events.LifecycleDeleted, start, "arm.list:missing", func(cur record) bool {
			return cur.exists() && !cur.VM.Deleted && cur.VM.EventTime.Before(cutoff)
		}, nil)
		if err != nil {
			errs = append(errs, err)
		}
	}
	r.log.InfoContext(ctx, "reconciled subscription", "subscription", sub, "vms", len(vms), "took", time.Since(start))
	return errors.Join(errs...)
}

// vm reconciles one VM of ARM's list (m) with its inventory record as read
// at the start of the pass (rec).
func (r *reconciler) vm(ctx context.Context, id normalize.VMID, m *armcompute.VirtualMachine, rec record, start, cutoff time.Time) error {
	if !rec.exists() && m.Properties != nil && m.Properties.TimeCreated != nil && m.Properties.TimeCreated.After(cutoff) &&
		eventgrid.CheckTime(*m.Properties.TimeCreated, start, r.p.skew) == nil {
		// Created moments ago: its own event is on the way and carries
		// the trace of its delivery. A later pass heals it if not. (A
		// creation time ahead of this clock is no reason to wait.)
		return nil
	}
	state := arm.PowerState(m)
	tags := r.p.armTags(ctx, id, m.Tags)
	kind, needed := r.drift(rec, state, cutoff)
	if needed != nil {
		op := "arm.list:" + string(kind)
		err := r.p.heal(ctx, id, kind, start, op, needed, func(vm *events.VM) {
			if state != "" {
				vm.PowerState = state
			}
			if m.Properties != nil && m.Properties.VMID != nil {
				vm.VMID = *m.Properties.VMID
			}
			if !start.Before(vm.TagsAt) {
				vm.Tags, vm.TagsAt = tags, start
			}
		})
		if err != nil {
			return err
		}
	} else if listed := listedVMID(m); rec.exists() && !rec.VM.Deleted &&
		(rec.VM.TagsAt.Before(start) && !maps.Equal(rec.VM.Tags, tags) || rec.VM.VMID == "" && listed != "") {
		// The tags changed without an event reaching Vigil (or before
		// its enrichment), or the VM waits for its enrichment's read
		// (each VM's read waits its turn within ARM's read budget, a
		// list page holds 1,000 VMs): the list shows them, and its
		// vmId lets the VM's first attestation go on.
		if err := r.p.fromList(ctx, id, rec, tags, listed, start); err != nil {
			return err
		}
	}
	switch {
	case needed != nil || !rec.exists():
		r.p.requestEnrich(ctx, id, start)
	case rec.VM.EnrichedAt.Before(rec.VM.EventTime):
		// As of the event the record waits for: a read that started
		// after it (since the pass read the inventory, say) is enough.
		r.p.requestEnrich(ctx, id, rec.VM.EventTime)
	}
	return nil
}

// drift decides whether an existing ARM VM needs a healing lifecycle event,
// and returns the re-check to run on the fresh record before publishing.
func (r *reconciler) drift(rec record, state string, cutoff time.Time) (events.LifecycleKind, func(record) bool) {
	if !rec.exists() || rec.VM.Deleted {
		return events.LifecycleCreated, func(cur record) bool {
			return !cur.exists() || (cur.VM.Deleted && cur.VM.EventTime.Before(cutoff))
		}
	}
	var kind events.LifecycleKind
	switch {
	case state == "running" && (rec.VM.PowerState == "stopped" || rec.VM.PowerState == "deallocated"):
		kind = events.LifecycleStarted
	case state == "stopped" && rec.VM.PowerState == "running":
		kind = events.LifecycleStopped
	case state == "deallocated" && (rec.VM.PowerState == "running" || rec.VM.PowerState == "stopped"):
		kind = events.LifecycleDeallocated
	default:
		return "", nil
	}
	if !rec.VM.EventTime.Before(cutoff) {
		return "", nil
	}
	was := rec.VM.PowerState
	return kind, func(cur record) bool {
		return cur.exists() && !cur.VM.Deleted && cur.VM.PowerState == was && cur.VM.EventTime.Before(cutoff)
	}
}

// loop reconciles at start and then every interval, or sooner when asked
// (queued; no sooner than r.kickGap after the last pass started), waiting as
// long as ARM asks when it throttles.
func (r *reconciler) loop(ctx context.Context, interval time.Duration) {
	for {
		started := time.Now()
		wait, kick := interval, r.kick
		err := r.run(ctx)
		var thr *arm.ThrottledError
		switch {
		case ctx.Err() != nil:
			return
		case errors.As(err, &thr):
			wait, kick = max(thr.RetryAfter, time.Second), nil
			r.log.WarnContext(ctx, "reconcile throttled by ARM", "retry_in", wait)
		case err != nil:
			wait = min(interval, time.Minute)
			r.log.ErrorContext(ctx, "reconcile failed; retrying", "retry_in", wait, "err", err)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-kick:
			timer.Stop()
			if !sleepCtx(ctx, time.Until(started.Add(r.kickGap))) {
				return
			}
			r.log.InfoContext(ctx, "reconciling early: VMs wait for their enrichment's read", "after", time.Since(started).Round(time.Millisecond))
		}
	}
}

// sleepCtx sleeps for d (nothing when d <= 0); false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// listedVMID is the vmId of a VM in ARM's list ("" when absent).
func listedVMID(m *armcompute.VirtualMachine) string {
	if m.Properties == nil || m.Properties.VMID == nil {
		return ""
	}
	return *m.Properties.VMID
}
