package attestworker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// A VM's first attestation waits for the vmId ARM reports (ingest's
// enrichment writes it into vigil-vms): attested before, its evidence's
// vmUniqueId could not be checked, and the verdict would say so
// (identity.vmid_unknown) for nothing but a race with enrichment. The wait
// is bounded by the onboarding limit; past it, the VM is attested without
// the vmId, so that a VM ARM never describes does not sit pending
// unnoticed: the policy's identity.unknown_vm_id decides its verdict and
// the status names the missing vmId. The vmId compared with the evidence
// comes from the inventory (or a job from ingest) only, never from the
// evidence.

// Reason codes of the wait (docs/design.md §13).
const (
	// ReasonAwaitingVMID: the VM is pending, its first attestation waits
	// for ARM to report its vmId.
	ReasonAwaitingVMID = "vm.awaiting_vmid"
	// ReasonVMIDNotReported: ARM did not report the VM's vmId within the
	// onboarding limit; it was attested without it.
	ReasonVMIDNotReported = "vm.vmid_not_reported"
)

// reasonEnriched is the job reason of an attestation enqueued because the
// vmId the VM's first attestation waited for arrived. It is event-driven
// (not a scheduled reason): it attests whatever the VM's due time.
const reasonEnriched = "enriched"

// DefaultOnboardingLimit bounds the wait for a VM's vmId when the
// configuration sets none.
const DefaultOnboardingLimit = 10 * time.Minute

// vmidWait decides what the attestation planned in p does about a
// missing vmId, when the policy in force checks it and neither the
// inventory nor the job has one. A VM that never had a verdict and is
// pending (or has no status yet) waits until its onboarding limit (wait);
// past the limit, and for every later attestation of a VM that waited in
// vain, the attempt is made without the vmId and its status says why
// (note). since is when the wait began.
func (w *Worker) vmidWait(p *jobPlan, now time.Time) (since time.Time, wait, note bool) {
	if p.vmID != "" || w.cfg.OnboardingLimit < 0 || !w.policies.policy().Identity.CheckVMID {
		return time.Time{}, false, false
	}
	st := p.st
	onboarding := !p.exists || (st.Status == events.StatusPending && st.LastVerdictAt.IsZero())
	switch {
	case onboarding:
		since = onboardingSince(st, p.exists, p.job, now)
		if now.Before(since.Add(w.cfg.OnboardingLimit)) {
			return since, true, false
		}
		return since, false, true
	case !st.AwaitingVMIDSince.IsZero():
		return st.AwaitingVMIDSince, false, true
	default:
		// Attested without a vmId before (it never waited): as before.
		return time.Time{}, false, false
	}
}

// onboardingSince is when a VM began to wait for its first attestation:
// when it began to wait for its vmId, else since it has been overdue (its
// creation or start event), else since it is pending, else when the job
// was requested.
func onboardingSince(st events.VMStatus, exists bool, job events.Job, now time.Time) time.Time {
	var t time.Time
	switch {
	case exists && !st.AwaitingVMIDSince.IsZero():
		t = st.AwaitingVMIDSince
	case exists && !st.OverdueSince.IsZero():
		t = st.OverdueSince
	case exists && !st.Since.IsZero():
		t = st.Since
	default:
		t = job.RequestedAt
	}
	if t.IsZero() || t.After(now) {
		t = now
	}
	return t.UTC()
}

// awaiting reports whether st is a VM whose first attestation waits for
// its vmId.
func awaiting(st events.VMStatus) bool {
	return st.Status == events.StatusPending && !st.AwaitingVMIDSince.IsZero()
}

// wantsVMID reports whether a VM with status st is to be attested as soon
// as its vmId arrives: it waits for it, or was attested without it after
// the onboarding limit (an attempt with a vmId clears AwaitingVMIDSince).
func wantsVMID(st events.VMStatus) bool {
	return !st.AwaitingVMIDSince.IsZero() && !notRunning(st.Status)
}

// awaitingRecord is the status record of a VM that waits for its vmId
// since since, until deadline at the latest: pending, due at the deadline
// (when a schedule attests it without the vmId), not overdue (the sweep
// neither counts it as a missed deadline nor makes it stale before the
// deadline plus the grace period; an attempt's grace counts from when it
// was due).
func awaitingRecord(prev events.VMStatus, exists bool, p *jobPlan, since, deadline, now time.Time, worker string) events.VMStatus {
	st := prev
	if !exists {
		st = events.VMStatus{VMKey: p.job.VMKey, Status: events.StatusPending, PreviousStatus: events.StatusPending, Since: now, ChangedBy: p.id}
	}
	if p.resourceID != "" {
		st.ResourceID = p.resourceID
	}
	st.AwaitingVMIDSince = since
	st.NextDueAt = deadline
	st.OverdueSince = time.Time{}
	st.Reasons = []events.Reason{{Code: ReasonAwaitingVMID, Message: fmt.Sprintf(
		"the first attestation waits for Azure Resource Manager to report the VM's vmId (at the latest until %s, then without it)",
		deadline.UTC().Format(time.RFC3339))}}
	st.UpdatedAt = now
	st.Worker = worker
	return st
}

// deferForVMID records that p's VM waits for its vmId (with a
// compare-and-set on the record p read: errConflict when another writer
// came first, and the job is resolved again) and schedules its
// attestation at the end of the wait. The job is then done, unless the
// inventory holds a vmId by the time the record is written (enrichment
// wrote it while this job read the records, and the inventory watch, which
// reads the status, may have missed the wait): p is then updated to attest
// now.
func (w *Worker) deferForVMID(ctx context.Context, p *jobPlan, since time.Time) (attestNow bool, err error) {
	vm := p.job.VMKey
	deadline := since.Add(w.cfg.OnboardingLimit)
	if !p.exists || !awaiting(p.st) || !p.st.AwaitingVMIDSince.Equal(since) || !p.st.NextDueAt.Equal(deadline) {
		st := awaitingRecord(p.st, p.exists, p, since, deadline, time.Now().UTC(), w.cfg.Name)
		rev, err := w.status.put(ctx, st, p.rev, p.exists)
		if err != nil {
			return false, err
		}
		p.st, p.rev, p.exists = st, rev, true
		w.metrics.vmidWaits.Add(ctx, 1, w.metrics.attrs.get("event", "deferred"))
		w.log.InfoContext(ctx, "first attestation waits for the VM's vmId", "vm", vm, "job", p.id, "since", since, "until", deadline)
	}
	if err := w.sched.at(ctx, events.Job{VMKey: vm, ResourceID: p.resourceID, Reason: reasonSchedule, Attempt: 1, DueAt: deadline}); err != nil {
		return false, err
	}
	inv, known, err := w.inv.get(ctx, vm)
	if err != nil {
		return false, err
	}
	if !known || inv.VMID == "" || inv.Deleted {
		return false, nil
	}
	p.vmID = inv.VMID
	if inv.ResourceID != "" {
		p.resourceID = inv.ResourceID
	}
	w.metrics.vmidWaits.Add(ctx, 1, w.metrics.attrs.get("event", "arrived"))
	return true, nil
}

// watchInventory attests promptly a VM whose vmId arrives while its first
// attestation waits for it: it follows the updates of vigil-vms (each
// worker, from when it starts; the sweep covers what a worker misses) and
// enqueues a job for a VM whose record now has a vmId and whose status
// still waits for one. The job's id is derived from the VM, its vmId and
// the wait, so that workers seeing the same update enqueue it once.
func (w *Worker) watchInventory(ctx context.Context) error {
	for {
		err := w.followInventory(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.log.WarnContext(ctx, "inventory watch ended; starting it again", "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (w *Worker) followInventory(ctx context.Context) error {
	wa, err := w.vmsKV.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("attest-worker: watch %s: %w", events.BucketVMs, err)
	}
	defer func() { _ = wa.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-wa.Updates():
			if !ok {
				return fmt.Errorf("attest-worker: watch %s: watcher closed", events.BucketVMs)
			}
			if e == nil {
				continue
			}
			var rec vmRecord
			if json.Unmarshal(e.Value(), &rec) != nil || rec.VMID == "" || rec.Deleted || !events.ValidVMKey(e.Key()) {
				continue
			}
			// The job continues the trace of ingest's write (the VM's
			// event, then its enrichment).
			if err := w.vmidArrived(bus.WithTraceParent(ctx, rec.Trace), e.Key(), rec, ""); err != nil {
				w.log.WarnContext(ctx, "enqueueing the attestation of a VM whose vmId arrived failed; the sweep will", "vm", e.Key(), "err", err)
			}
		}
	}
}

// vmidArrived enqueues the attestation of vm, whose inventory record rec
// has a vmId, if its status still wants one (wantsVMID). causeID names the sweep
// that found it (empty for the watch).
func (w *Worker) vmidArrived(ctx context.Context, vm string, rec vmRecord, causeID string) error {
	st, _, exists, err := w.status.get(ctx, vm)
	if err != nil || !exists || !wantsVMID(st) {
		return err
	}
	id := derivedID("job", reasonEnriched, vm, rec.VMID, st.AwaitingVMIDSince.Format(time.RFC3339Nano))
	if causeID != "" {
		id = derivedID("job", causeID, vm)
	}
	absorbed, err := enqueue(ctx, w.conn, w.source, id, events.Job{VMKey: vm, ResourceID: rec.ResourceID, VMID: rec.VMID, Reason: reasonEnriched})
	if err != nil {
		return err
	}
	if !absorbed {
		w.metrics.vmidWaits.Add(ctx, 1, w.metrics.attrs.get("event", "arrived"))
		w.log.DebugContext(ctx, "vmId arrived; attesting", "vm", vm, "waited", time.Since(st.AwaitingVMIDSince).Round(time.Millisecond))
	}
	return nil
}

// vmidNote is the reason a status record carries when its VM was attested
// without a vmId after waiting for it past the onboarding limit.
func vmidNote(since time.Time, limit time.Duration) events.Reason {
	return events.Reason{Code: ReasonVMIDNotReported, Message: fmt.Sprintf(
		"Azure Resource Manager has not reported the VM's vmId since %s (onboarding limit %s): attested without it, so the evidence's vmUniqueId was not checked and the policy's identity.unknown_vm_id decides",
		since.UTC().Format(time.RFC3339), limit)}
}
