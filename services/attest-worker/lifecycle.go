package attestworker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// applyLifecycle computes the status record after lifecycle event l (with
// envelope id id) arrived at now. ok is false when the event changes
// nothing.
func applyLifecycle(prev events.VMStatus, exists bool, l events.Lifecycle, id string, now time.Time, worker string) (o outcome, ok bool) {
	st := prev
	if !exists {
		st = events.VMStatus{VMKey: l.VMKey, Status: events.StatusPending, Since: now}
	}
	from := st.Status
	if !exists {
		from = ""
	}
	var to events.Status
	switch l.Kind {
	case events.LifecycleStopped, events.LifecycleDeallocated:
		if exists && (from == events.StatusSuspended || from == events.StatusRetired) {
			return outcome{}, false
		}
		if !st.LastGoodAt.IsZero() && !l.OccurredAt.IsZero() && st.LastGoodAt.After(l.OccurredAt) {
			// Valid evidence newer than the stop: the event arrived late.
			return outcome{}, false
		}
		to = events.StatusSuspended
		st.Reasons = []events.Reason{{Code: "vm." + string(l.Kind), Message: fmt.Sprintf("VM %s at %s", l.Kind, l.OccurredAt.UTC().Format(time.RFC3339))}}
		st.NextDueAt = time.Time{}
		st.OverdueSince = time.Time{}
		st.ConsecutiveFailures = 0
	case events.LifecycleDeleted:
		if exists && from == events.StatusRetired {
			return outcome{}, false
		}
		to = events.StatusRetired
		st.Reasons = []events.Reason{{Code: "vm.deleted", Message: fmt.Sprintf("VM deleted at %s", l.OccurredAt.UTC().Format(time.RFC3339))}}
		st.NextDueAt = time.Time{}
		st.OverdueSince = time.Time{}
		st.ConsecutiveFailures = 0
	case events.LifecycleCreated, events.LifecycleStarted, events.LifecycleRestarted, events.LifecycleAvailable:
		if exists && from != events.StatusSuspended && from != events.StatusRetired {
			return outcome{}, false
		}
		if exists && !l.OccurredAt.IsZero() && l.OccurredAt.Before(st.Since.Add(-time.Second)) {
			// Older than the stop or delete already applied.
			return outcome{}, false
		}
		to = events.StatusPending
		st.Reasons = []events.Reason{{Code: "vm." + string(l.Kind), Message: "waiting for the first attestation"}}
		// Ingest enqueues a job for the start; the sweep enqueues one if it
		// is lost. The VM has until the grace period after the start to
		// attest.
		st.NextDueAt = now
		st.OverdueSince = l.OccurredAt
		if st.OverdueSince.IsZero() || st.OverdueSince.After(now) {
			st.OverdueSince = now
		}
		st.ConsecutiveFailures = 0
	default:
		return outcome{}, false
	}
	st.VMKey = l.VMKey
	if l.ResourceID != "" {
		st.ResourceID = l.ResourceID
	}
	if l.VMID != "" {
		st.VMID = l.VMID
	}
	st.PreviousStatus = from
	if from == "" {
		st.PreviousStatus = events.StatusPending
	}
	st.Status = to
	st.Since = now
	st.ChangedBy = id
	st.UpdatedAt = now
	st.Worker = worker
	return outcome{Status: st, From: st.PreviousStatus, Changed: to != st.PreviousStatus || !exists}, true
}

// handleLifecycle keeps the status in step with what happened to the VM:
// stopped or deallocated → suspended, deleted → retired (both without a
// schedule), created or started after either → pending.
func (w *Worker) handleLifecycle(ctx context.Context, m *bus.Message) error {
	var l events.Lifecycle
	if err := m.Envelope.Decode(events.TypeLifecycle, &l); err != nil {
		return bus.Permanent(err)
	}
	vm := events.VMFromSubject(m.Msg.Subject())
	if vm == "" {
		return bus.Permanent(fmt.Errorf("lifecycle event on subject %s names no VM", m.Msg.Subject()))
	}
	if l.Superseded {
		return nil // on record only: a newer event already decided the VM's state
	}
	l.VMKey = vm
	for i := 0; ; i++ {
		st, rev, exists, err := w.status.get(ctx, vm)
		if err != nil {
			return err
		}
		if exists && st.ChangedBy == m.Envelope.ID {
			// Applied already (redelivery): finish the steps after the write.
			return w.afterLifecycle(ctx, outcome{Status: st, From: st.PreviousStatus, Changed: true})
		}
		o, ok := applyLifecycle(st, exists, l, m.Envelope.ID, time.Now().UTC(), w.cfg.Name)
		if !ok {
			return nil
		}
		_, err = w.status.put(ctx, o.Status, rev, exists)
		if errors.Is(err, errConflict) && i < maxCASAttempts {
			continue
		}
		if err != nil {
			return err
		}
		w.metrics.transition(ctx, o)
		return w.afterLifecycle(ctx, o)
	}
}

func (w *Worker) afterLifecycle(ctx context.Context, o outcome) error {
	st := o.Status
	if st.Status == events.StatusSuspended || st.Status == events.StatusRetired {
		if err := w.sched.cancel(ctx, st.VMKey); err != nil {
			return err
		}
	}
	if o.Changed && o.From != st.Status {
		if err := w.publishState(ctx, o); err != nil {
			return err
		}
		for _, a := range alertsFor(o, w.source) {
			if err := w.publishAlert(ctx, a); err != nil {
				return err
			}
		}
	}
	return nil
}
