package attestworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// sweepReport is what one sweep found.
type sweepReport struct {
	Checked  int           // status records looked at
	Overdue  int           // VMs whose attestation is overdue by more than MissedAfter
	Worst    time.Duration // the largest overdue time
	WorstVM  string
	Stale    int // VMs the sweep made stale
	Enqueued int // jobs the sweep enqueued (absorbed ones included)
	Adopted  int // running VMs in the inventory that had no status yet
	// AwaitingVMID are the VMs whose first attestation waits for their
	// vmId (not overdue before their onboarding limit).
	AwaitingVMID int
	sampleVMs    []string
}

// maxSweepSample bounds the VM keys named in a missed-deadline alert.
const maxSweepSample = 10

// sweep checks every VM for a missed deadline. It is the safety net under
// the per-VM schedules: a VM whose attestation is overdue (its schedule was
// lost, or the workers cannot keep up) gets a job; one whose grace period
// has run out without an attempt becomes stale; a running VM in the
// inventory without a status record is adopted. The sweep runs on one
// worker at a time, driven by the fleet-wide repeating schedule.
func (w *Worker) sweep(ctx context.Context, causeID string) (sweepReport, error) {
	now := time.Now().UTC()
	var rep sweepReport
	tracked := map[string]bool{}
	wantVMID := map[string]bool{} // VMs to attest as soon as their vmId is in the inventory
	err := eachValue(ctx, w.statusKV, func(key string, val []byte) error {
		var st events.VMStatus
		if err := json.Unmarshal(val, &st); err != nil {
			return nil
		}
		rep.Checked++
		tracked[key] = true
		if st.Status == events.StatusSuspended || st.Status == events.StatusRetired {
			return nil
		}
		if st.VMKey == "" {
			st.VMKey = key
		}
		if wantsVMID(st) {
			wantVMID[key] = true
		}
		if awaiting(st) {
			// Due at its onboarding limit (NextDueAt): overdue, and stale
			// after the grace period, only from then.
			rep.AwaitingVMID++
		}
		due := st.NextDueAt
		if !due.IsZero() && now.Sub(due) <= w.cfg.MissedAfter {
			return nil
		}
		lag := now.Sub(due)
		if due.IsZero() {
			lag = now.Sub(st.UpdatedAt)
		}
		rep.Overdue++
		if lag > rep.Worst {
			rep.Worst, rep.WorstVM = lag, key
		}
		if len(rep.sampleVMs) < maxSweepSample {
			rep.sampleVMs = append(rep.sampleVMs, key)
		}
		if staleByDeadline(st, now, w.policies.timing()) {
			if made, err := w.sweepStale(ctx, key, causeID); err != nil {
				return err
			} else if made {
				rep.Stale++
			}
		}
		reason := reasonSweep
		if _, err := enqueue(ctx, w.conn, w.source, derivedID("job", causeID, key), events.Job{
			VMKey: key, ResourceID: st.ResourceID, VMID: st.VMID, Reason: reason, Attempt: st.ConsecutiveFailures + 1, DueAt: due,
		}); err != nil {
			return err
		}
		rep.Enqueued++
		return nil
	})
	if err != nil {
		return rep, err
	}
	err = eachValue(ctx, w.vmsKV, func(key string, val []byte) error {
		if wantVMID[key] {
			// The inventory watch enqueues its attestation when the vmId
			// arrives; this catches an update it missed.
			var rec vmRecord
			if json.Unmarshal(val, &rec) != nil || rec.VMID == "" || rec.Deleted {
				return nil
			}
			rep.Enqueued++
			return w.vmidArrived(ctx, key, rec, causeID)
		}
		if tracked[key] || !events.ValidVMKey(key) {
			return nil
		}
		var rec events.VM
		if err := json.Unmarshal(val, &rec); err != nil || rec.Deleted || !running(rec) {
			return nil
		}
		adopted, err := w.adopt(ctx, key, rec, causeID, now)
		if err != nil {
			return err
		}
		if adopted {
			rep.Adopted++
			rep.Enqueued++
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	w.metrics.overdue.Record(ctx, int64(rep.Overdue))
	if rep.Overdue > 0 {
		w.metrics.missed.Add(ctx, int64(rep.Overdue), w.metrics.attrs.get("at", "sweep"))
		sort.Strings(rep.sampleVMs)
		a := events.Alert{
			Severity: events.SeverityWarning,
			Code:     "schedule.deadline_missed",
			Message: fmt.Sprintf("%d of %d VMs are overdue by more than %s (worst %s by %s; e.g. %s); jobs were enqueued for them",
				rep.Overdue, rep.Checked, w.cfg.MissedAfter, rep.WorstVM, rep.Worst.Round(time.Second), strings.Join(rep.sampleVMs, ", ")),
			CauseID: causeID,
			Source:  w.source,
			At:      now,
		}
		if err := w.publishAlert(ctx, a); err != nil {
			return rep, err
		}
	}
	w.log.InfoContext(ctx, "sweep done", "checked", rep.Checked, "overdue", rep.Overdue, "worst", rep.Worst.Round(time.Millisecond),
		"stale", rep.Stale, "enqueued", rep.Enqueued, "adopted", rep.Adopted, "awaiting_vmid", rep.AwaitingVMID, "took", time.Since(now).Round(time.Millisecond))
	return rep, nil
}

// sweepStale marks the VM stale if it still is past its deadline when read
// again (compare-and-set against attempts running at the same time).
func (w *Worker) sweepStale(ctx context.Context, vm, causeID string) (bool, error) {
	for i := 0; i < maxCASAttempts; i++ {
		st, rev, exists, err := w.status.get(ctx, vm)
		if err != nil || !exists {
			return false, err
		}
		now := time.Now().UTC()
		if !staleByDeadline(st, now, w.policies.timing()) {
			return false, nil
		}
		o := markStale(st, now, w.policies.timing(), derivedID("sweep", causeID, vm), w.cfg.Name)
		if _, err := w.status.put(ctx, o.Status, rev, true); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return false, err
		}
		w.metrics.transition(ctx, o)
		if err := w.publishState(ctx, o); err != nil {
			return true, err
		}
		for _, a := range alertsFor(o, w.source) {
			if err := w.publishAlert(ctx, a); err != nil {
				return true, err
			}
		}
		return true, nil
	}
	return false, nil
}

// adopt gives a running VM that has no status record a pending one and a
// job. Its grace period counts from the newest event ingest saw for it. A
// VM with a job still on VIGIL_JOBS (a work queue: a job leaves it when
// acknowledged, after its status is stored) is left to that job: a
// creation job that runs slowly is not an unscheduled VM.
func (w *Worker) adopt(ctx context.Context, vm string, rec events.VM, causeID string, now time.Time) (bool, error) {
	if _, err := w.jobs.GetLastMsgForSubject(ctx, events.AttestJobSubject(vm)); err == nil {
		return false, nil
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, fmt.Errorf("attest-worker: pending job of %s: %w", vm, err)
	}
	since := rec.EventTime
	if since.IsZero() || since.After(now) {
		since = now
	}
	st := events.VMStatus{
		VMKey: vm, ResourceID: rec.ResourceID, VMID: rec.VMID, Status: events.StatusPending, Since: now,
		Reasons:   []events.Reason{{Code: "vm.running", Message: "running VM found in the inventory without an attestation status"}},
		NextDueAt: now, OverdueSince: since, UpdatedAt: now, Worker: w.cfg.Name, ChangedBy: derivedID("sweep", causeID, vm),
	}
	if _, err := w.status.put(ctx, st, 0, false); errors.Is(err, errConflict) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if _, err := enqueue(ctx, w.conn, w.source, derivedID("job", causeID, vm), events.Job{
		VMKey: vm, ResourceID: rec.ResourceID, VMID: rec.VMID, Reason: reasonSweep, RequestedAt: now,
	}); err != nil {
		return true, err
	}
	return true, nil
}

// running reports whether an inventory record says the VM is running.
func running(rec events.VM) bool {
	switch strings.ToLower(rec.PowerState) {
	case "running", "starting":
		return true
	case "":
		switch rec.Lifecycle {
		case events.LifecycleCreated, events.LifecycleStarted, events.LifecycleRestarted:
			return true
		}
	}
	return false
}

// eachValue calls fn for the latest value of every key in kv.
func eachValue(ctx context.Context, kv jetstream.KeyValue, fn func(key string, val []byte) error) error {
	wa, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("attest-worker: list %s: %w", kv.Bucket(), err)
	}
	defer func() { _ = wa.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-wa.Updates():
			if !ok {
				return fmt.Errorf("attest-worker: list %s: watcher closed", kv.Bucket())
			}
			if e == nil {
				return nil // all current values delivered
			}
			if err := fn(e.Key(), e.Value()); err != nil {
				return err
			}
		}
	}
}

// handleDue handles a fired schedule: the fleet sweep, or a VM's
// attestation, which it attests as the job the schedule carries, with the
// fired message's envelope id as the job's id. Attesting here rather than
// forwarding the job to VIGIL_JOBS saves each scheduled attestation a
// store, a delivery and an acknowledgement on every replica; the fired
// message is acknowledged after the outcome is stored, as a job is, and a
// redelivery completes what the first delivery stored (handleJob). An
// event-driven job for the same VM may run at the same moment: both store
// their outcome by compare-and-set, and evidence older than the status's
// changes nothing (applyAttempt).
func (w *Worker) handleDue(ctx context.Context, m *bus.Message) error {
	if m.Msg.Subject() == events.SubjectSweepDue {
		// Every firing of the repeating schedule carries the same body;
		// the stream sequence tells the firings apart.
		_, err := w.sweep(ctx, fmt.Sprintf("%s-%d", m.Envelope.ID, m.Meta.Sequence.Stream))
		return err
	}
	return w.handleJob(ctx, m)
}
