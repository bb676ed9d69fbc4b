package attestworker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// NonceSize is the size of a challenge nonce.
const NonceSize = 32

// maxCASAttempts bounds the compare-and-set loop on one status record.
const maxCASAttempts = 8

// handleJob attests one VM: challenge, verify, verdict, status, next
// schedule. It returns nil (ack) only after the outcome is stored; a crash
// anywhere before leaves the job to be redelivered, and every event it
// publishes has an id derived from the job, so a redelivery stores nothing
// twice.
//
// The steps: resolveJob reads what the job is about and decides whether to
// attest; attemptJob attests and stores the outcome with a compare-and-set;
// recordOutcome reports it; afterStore publishes what follows from it and
// schedules the next attestation.
func (w *Worker) handleJob(ctx context.Context, m *bus.Message) error {
	ctx, cancel := w.jobContext(ctx)
	defer cancel()
	var p jobPlan
	for i := 0; ; i++ {
		var err error
		if p, err = w.resolveJob(ctx, m); err != nil {
			return err
		}
		switch p.action {
		case jobSkip:
			return nil
		case jobComplete:
			return w.afterStore(ctx, p.stored)
		}
		since, wait, note := w.vmidWait(&p, time.Now().UTC())
		if note {
			p.vmidNote = vmidNote(since, w.cfg.OnboardingLimit)
			p.awaitingSince = since
			w.metrics.vmidWaits.Add(ctx, 1, w.metrics.attrs.get("event", "expired"))
		}
		if !wait {
			break
		}
		// The VM's first attestation waits for its vmId (onboard.go).
		attestNow, err := w.deferForVMID(ctx, &p, since)
		switch {
		case errors.Is(err, errConflict) && i < maxCASAttempts:
			continue // the record changed meanwhile: resolve the job again
		case err != nil:
			return err
		case !attestNow:
			return nil
		}
		break
	}
	o, err := w.attemptJob(ctx, &p)
	if err != nil {
		return err
	}
	w.recordOutcome(ctx, &p, o, m.Meta.NumDelivered)
	return w.afterStore(ctx, o)
}

// jobAction is what a resolved job calls for.
type jobAction int

const (
	// jobAttest: challenge the VM and store the outcome.
	jobAttest jobAction = iota
	// jobSkip: nothing to do (a scheduled job for a VM that is stopped,
	// retired or deleted); ack the job.
	jobSkip
	// jobComplete: no attempt, only the steps after the store for
	// jobPlan.stored (a redelivered job whose outcome is stored, or an
	// obsolete scheduled job whose VM's current schedule is written again).
	jobComplete
)

// jobPlan is a resolved job: the VM, its records as read, and what to do.
type jobPlan struct {
	action jobAction
	job    events.Job // VMKey is the VM of the subject
	id     string     // the job's envelope id, which ids the attempt
	// scheduled: the job comes from a schedule, a retry or the sweep
	// (rather than an event or an operator), so it yields to a stop.
	scheduled bool
	// st, rev and exists are the VM's status record as read: the base of
	// the attempt's compare-and-set.
	st     events.VMStatus
	rev    uint64
	exists bool
	// resourceID and vmID are the identity the evidence must show: the
	// inventory's, else the job's (the resource ID else the status's).
	resourceID, vmID string
	due              time.Time // when the attestation became due (or was requested); may be zero
	stored           outcome   // for jobComplete
	// vmidNote, when set, is why the attempt is made without a vmId: the
	// VM waited for it since awaitingSince, past the onboarding limit.
	vmidNote      events.Reason
	awaitingSince time.Time
}

// resolveJob decodes the job, reads the VM's status record and (when it
// may attest) inventory record, and decides what to do. It writes nothing.
// A malformed job is a permanent error; a failed read is returned as is,
// for a redelivery.
func (w *Worker) resolveJob(ctx context.Context, m *bus.Message) (jobPlan, error) {
	var job events.Job
	if err := m.Envelope.Decode(events.TypeJob, &job); err != nil {
		return jobPlan{}, bus.Permanent(err)
	}
	vm := events.VMFromSubject(m.Msg.Subject())
	if vm == "" || (job.VMKey != "" && job.VMKey != vm) {
		return jobPlan{}, bus.Permanent(fmt.Errorf("job for %q on subject %s", job.VMKey, m.Msg.Subject()))
	}
	job.VMKey = vm
	p := jobPlan{job: job, id: m.Envelope.ID, scheduled: scheduledReason(job.Reason)}
	var err error
	if p.st, p.rev, p.exists, err = w.status.get(ctx, vm); err != nil {
		return jobPlan{}, err
	}
	st := p.st
	switch {
	case p.exists && st.LastJobID == p.id:
		// Redelivered after its outcome was stored: complete the steps
		// after the status write (all idempotent).
		w.log.InfoContext(ctx, "job outcome already stored; completing it", "vm", vm, "job", p.id)
		p.action, p.stored = jobComplete, storedOutcome(st, p.id)
		return p, nil
	case p.exists && p.scheduled && notRunning(st.Status):
		p.action = jobSkip
		return p, nil
	case p.exists && p.scheduled && !job.DueAt.IsZero() && st.NextDueAt.After(job.DueAt.Add(time.Second)):
		// Another attempt has set a later due time since this job was
		// scheduled (a job from ingest attested the VM, or the sweep saw it
		// overdue just before its own job ran): this one is obsolete. The
		// firing of an obsolete schedule purges whatever schedule the VM
		// has by then, so write the current one again (a replacement when
		// it still exists). A stopped or retired VM was skipped above.
		w.log.DebugContext(ctx, "obsolete job", "vm", vm, "job", p.id, "reason", job.Reason, "due", job.DueAt, "next_due", st.NextDueAt)
		p.action, p.stored = jobComplete, outcome{Status: st}
		return p, nil
	}
	inv, known, err := w.inv.get(ctx, vm)
	if err != nil {
		return jobPlan{}, err
	}
	if known && inv.Deleted && p.scheduled {
		p.action = jobSkip
		return p, nil
	}
	p.resourceID, p.vmID = job.ResourceID, job.VMID
	if known {
		if inv.ResourceID != "" {
			p.resourceID = inv.ResourceID
		}
		if inv.VMID != "" {
			p.vmID = inv.VMID
		}
	}
	if p.resourceID == "" {
		p.resourceID = st.ResourceID
	}
	p.due = job.DueAt
	if p.due.IsZero() {
		p.due = job.RequestedAt
	}
	p.action = jobAttest
	return p, nil
}

// notRunning says whether a VM with status s is not to be attested on
// schedule: stopped (suspended) or deleted (retired).
func notRunning(s events.Status) bool {
	return s == events.StatusSuspended || s == events.StatusRetired
}

// storedOutcome is the outcome job stored in st (st.LastJobID is job).
func storedOutcome(st events.VMStatus, job string) outcome {
	return outcome{Status: st, From: st.PreviousStatus, Changed: st.ChangedBy == job}
}

// attemptJob attests p's VM (challenge, evidence, verification, appraisal),
// stores the verdict, and stores the outcome in the VM's status record
// (storeAttempt). It returns the stored outcome, or an error when a store
// failed: the job is then redelivered, and the verdict's derived id keeps
// the next attempt from storing a second one.
func (w *Worker) attemptJob(ctx context.Context, p *jobPlan) (outcome, error) {
	// A slot first (jobs and fired schedules share them); a job that
	// gets none before its deadline is not acknowledged and comes back.
	select {
	case w.slots <- struct{}{}:
	case <-ctx.Done():
		return outcome{}, fmt.Errorf("attest-worker: no slot to attest %s: %w", p.job.VMKey, ctx.Err())
	}
	w.recordLag(ctx, p)
	vm := p.job.VMKey
	a := w.attempt(ctx, vm, p.id, p.job.Attempt, p.resourceID, p.vmID)
	<-w.slots
	a.DueAt = p.due
	a.VMIDNote, a.AwaitingVMIDSince = p.vmidNote, p.awaitingSince
	w.hook("appraised", vm)
	if a.Verdict != nil {
		v, err := w.publishVerdict(ctx, a.Verdict)
		if err != nil {
			return outcome{}, err
		}
		a.Verdict = v
		w.hook("verdict", vm)
	}
	return w.storeAttempt(ctx, p, a)
}

// recordLag records how late the attestation of p starts, and a missed
// deadline when a scheduled one starts later than MissedAfter.
func (w *Worker) recordLag(ctx context.Context, p *jobPlan) {
	if p.due.IsZero() {
		return
	}
	lag := time.Since(p.due)
	w.metrics.lag.Record(ctx, max(lag, 0).Seconds(), w.metrics.attrs.get("reason", p.job.Reason))
	if p.scheduled && lag > w.cfg.MissedAfter {
		w.metrics.missed.Add(ctx, 1, w.metrics.attrs.get("at", "job"))
		w.log.WarnContext(ctx, "attestation started after its deadline", "vm", p.job.VMKey, "due", p.due, "lag", lag.Round(time.Millisecond))
	}
}

// storeAttempt writes the status record that follows attempt a with a
// compare-and-set on the record p read. After a conflict it reads the
// record again and applies a to it, up to maxCASAttempts times; when the
// record read again holds this job's outcome already (a redelivery of the
// job got there first), that outcome is the result.
func (w *Worker) storeAttempt(ctx context.Context, p *jobPlan, a attempt) (outcome, error) {
	st, rev, exists := p.st, p.rev, p.exists
	for i := 0; ; i++ {
		if exists && notRunning(st.Status) && (p.scheduled || a.Verdict == nil) {
			// Stopped or deleted while the attempt ran: record it, but
			// neither change the status nor schedule again.
			a.KeepStatus = true
		}
		o := applyAttempt(st, exists, a, w.policies.timing())
		if o.Stale {
			w.log.InfoContext(ctx, "attempt on a challenge older than the status's evidence; nothing changed",
				"vm", p.job.VMKey, "job", p.id, "challenged_at", a.ChallengedAt, "status_challenged_at", st.LastChallengeAt)
			return o, nil
		}
		_, err := w.status.put(ctx, o.Status, rev, exists)
		if err == nil {
			return o, nil
		}
		if !errors.Is(err, errConflict) || i >= maxCASAttempts {
			return outcome{}, err
		}
		if st, rev, exists, err = w.status.get(ctx, p.job.VMKey); err != nil {
			return outcome{}, err
		}
		if exists && st.LastJobID == p.id {
			return storedOutcome(st, p.id), nil
		}
	}
}

// recordOutcome reports the outcome an attempt stored: the transition
// metrics, a debug line, and the tests' hooks.
func (w *Worker) recordOutcome(ctx context.Context, p *jobPlan, o outcome, delivered uint64) {
	w.metrics.transition(ctx, o)
	if w.log.Enabled(ctx, slog.LevelDebug) {
		w.log.DebugContext(ctx, "attempt recorded", "vm", p.job.VMKey, "job", p.id, "reason", p.job.Reason, "due", p.due,
			"delivered", delivered, "status", o.Status.Status, "next_due", o.Status.NextDueAt)
	}
	w.hook("status", p.job.VMKey)
	if w.hooks.record != nil {
		job := p.job
		job.DueAt = p.due
		w.hooks.record(job, o.Status)
	}
}

// jobContext bounds the handling of one job or fired schedule by the
// challenge timeout plus the ack wait (past that, JetStream may hand the
// message to another worker anyway; running handlers keep theirs in
// progress). The JetStream calls of the handler then share this one
// deadline instead of each arming a timer of its own (the client's 5 s
// default for a context without a deadline); the challenge keeps its
// shorter deadline.
func (w *Worker) jobContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, w.cfg.ChallengeTimeout+w.cfg.AckWait)
}

func (w *Worker) hook(point, vm string) {
	if w.hooks.point != nil {
		w.hooks.point(point, vm)
	}
}

// afterStore publishes the state change and alerts of a stored outcome
// and schedules the VM's next attestation (none for a VM that is not
// running). Every step is idempotent, so a redelivered job repeats them.
func (w *Worker) afterStore(ctx context.Context, o outcome) error {
	st := o.Status
	if o.Changed {
		if err := w.publishState(ctx, o); err != nil {
			return err
		}
		for _, a := range alertsFor(o, w.source) {
			if err := w.publishAlert(ctx, a); err != nil {
				return err
			}
		}
	}
	if notRunning(st.Status) || st.NextDueAt.IsZero() {
		return nil
	}
	reason := reasonSchedule
	if st.ConsecutiveFailures > 0 {
		reason = reasonRetry
	}
	return w.sched.at(ctx, events.Job{
		VMKey:      st.VMKey,
		ResourceID: st.ResourceID,
		VMID:       st.VMID,
		Reason:     reason,
		Attempt:    st.ConsecutiveFailures + 1,
		DueAt:      st.NextDueAt,
	})
}

// attempt challenges the VM's agent and appraises its answer.
func (w *Worker) attempt(ctx context.Context, vm, jobID string, attemptNo int, resourceID, vmID string) attempt {
	a := attempt{VMKey: vm, JobID: jobID, Worker: w.cfg.Name, ResourceID: resourceID, VMID: vmID}
	nonce := make([]byte, NonceSize)
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails (Go 1.24+).

	w.metrics.inflight.Add(ctx, 1)
	defer w.metrics.inflight.Add(ctx, -1)
	start := time.Now()
	a.ChallengedAt = start.UTC()
	deadline := start.Add(w.cfg.ChallengeTimeout)
	rctx, cancel := context.WithDeadline(ctx, deadline)
	var bundle []byte
	err := w.conn.Request(rctx, events.ChallengeSubject(vm), events.Challenge{VMKey: vm, Nonce: nonce, Deadline: deadline.UTC()}, &bundle)
	cancel()
	w.metrics.challenge.Record(ctx, time.Since(start).Seconds())
	a.At = time.Now().UTC()
	if err != nil {
		a.Failure = challengeFailure(err, w.cfg.ChallengeTimeout)
		w.metrics.attempts.Add(ctx, 1, w.metrics.attrs.get("outcome", a.Failure.Code))
		return a
	}

	vstart := time.Now()
	v, err := w.appraiser.appraise(ctx, appraisal{VMKey: vm, ResourceID: resourceID, VMID: vmID, Bundle: bundle, Nonce: nonce})
	w.metrics.verify.Record(ctx, time.Since(vstart).Seconds())
	a.At = time.Now().UTC()
	if err != nil {
		a.Failure = events.Reason{Code: "verifier.error", Message: err.Error()}
		w.metrics.attempts.Add(ctx, 1, w.metrics.attrs.get("outcome", a.Failure.Code))
		return a
	}
	v.ID = derivedID("verdict", jobID)
	v.VMKey = vm
	v.JobID = jobID
	v.Attempt = attemptNo
	if v.ResourceID == "" {
		v.ResourceID = resourceID
	}
	if v.IssuedAt.IsZero() {
		v.IssuedAt = a.At
	}
	a.Verdict = v
	w.metrics.attempts.Add(ctx, 1, w.metrics.attrs.get("outcome", "verdict"))
	w.metrics.verdicts.Add(ctx, 1, w.metrics.attrs.get("status", v.Status))
	trace.SpanFromContext(ctx).SetAttributes(attribute.String("vigil.verdict", v.Status))
	return a
}

// challengeFailure names why a challenge got no evidence.
func challengeFailure(err error, timeout time.Duration) events.Reason {
	var re *bus.ReplyError
	switch {
	case errors.Is(err, bus.ErrNoResponders):
		return events.Reason{Code: "agent.unreachable", Message: "no agent answers challenges for this VM"}
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return events.Reason{Code: "agent.timeout", Message: fmt.Sprintf("the agent did not answer within %s", timeout)}
	case errors.As(err, &re):
		return events.Reason{Code: "agent.refused", Message: re.Error()}
	default:
		return events.Reason{Code: "agent.unreachable", Message: err.Error()}
	}
}

// publishVerdict stores v under its job-derived id. When a verdict with that
// id is stored already (a redelivered job), the stored one is returned, so
// the status always follows the verdict that exists.
func (w *Worker) publishVerdict(ctx context.Context, v *events.Verdict) (*events.Verdict, error) {
	env, err := events.New(events.TypeVerdict, w.source, events.VerdictSubject(v.VMKey), v)
	if err != nil {
		return nil, err
	}
	env.ID = v.ID
	ack, err := w.conn.Publish(ctx, events.VerdictSubject(v.VMKey), env)
	if err != nil {
		return nil, err
	}
	if !ack.Duplicate {
		return v, nil
	}
	raw, err := w.events.GetMsg(ctx, ack.Sequence)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: read stored verdict %s: %w", v.ID, err)
	}
	stored, err := events.Parse(raw.Data)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: stored verdict %s: %w", v.ID, err)
	}
	var out events.Verdict
	if err := stored.Decode(events.TypeVerdict, &out); err != nil {
		return nil, fmt.Errorf("attest-worker: stored verdict %s: %w", v.ID, err)
	}
	return &out, nil
}

// publishState publishes the status change of o under an id derived from
// the job or event that made it.
func (w *Worker) publishState(ctx context.Context, o outcome) error {
	st := o.Status
	s := events.State{
		VMKey: st.VMKey, ResourceID: st.ResourceID, VMID: st.VMID,
		From: o.From, To: st.Status, Reasons: st.Reasons, ChangedAt: st.Since,
	}
	if st.LastVerdictID != "" && st.LastJobID == st.ChangedBy && st.LastVerdictAt.Equal(st.Since) {
		s.VerdictID = st.LastVerdictID
	}
	env, err := events.New(events.TypeState, w.source, events.StateSubject(st.VMKey), s)
	if err != nil {
		return err
	}
	env.ID = derivedID("state", st.ChangedBy, string(o.From), string(st.Status))
	_, err = w.conn.Publish(ctx, events.StateSubject(st.VMKey), env)
	return err
}

// publishAlert publishes a under an id derived from its cause.
func (w *Worker) publishAlert(ctx context.Context, a events.Alert) error {
	if err := w.conn.PublishAlert(ctx, w.source, derivedID("alert", a.CauseID, a.Code, a.VMKey), a); err != nil {
		return err
	}
	w.metrics.alerts.Add(ctx, 1, w.metrics.attrs.get("code", a.Code))
	return nil
}

// streamGetter is the part of jetstream.Stream publishVerdict needs.
type streamGetter interface {
	GetMsg(ctx context.Context, seq uint64, opts ...jetstream.GetMsgOpt) (*jetstream.RawStreamMsg, error)
}
