package attestworker

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Timing says how often a VM is attested and how long it may go without
// valid evidence.
type Timing struct {
	// Interval between two attestations of a VM (default 5 minutes).
	Interval time.Duration
	// Jitter bounds how far a due time may move from one interval after
	// the previous attestation (± Jitter × Interval; default 0.1, at most
	// 0.5). Each VM moves toward its own slot in the interval, derived
	// from its VM key, so that the fleet's attestations spread evenly over
	// the interval instead of arriving in bursts (see nextDue).
	Jitter float64
	// Grace is how long after an attestation became due valid evidence may
	// still arrive before the VM is stale (default 2 minutes).
	Grace time.Duration
	// Onboarding is the grace period of a VM that has never given valid
	// evidence, counted from when it became due (its creation or start
	// event, or the arrival of the vmId its first attestation waited
	// for): it boots, its agent enrolls, and a fleet created at once
	// enrolls in turn. Such a VM is not releasable meanwhile, so nothing
	// is released on the longer wait; past it the VM is stale
	// (vm.never_attested). Never shorter than Grace (the default).
	Onboarding time.Duration
	// RetryBase and RetryMax bound the exponential backoff between attempts
	// when the agent does not answer (defaults 2 s and the smaller of 1
	// minute and Interval).
	RetryBase, RetryMax time.Duration
}

// DefaultInterval and DefaultGrace apply when neither the configuration
// nor the policy sets them.
const (
	DefaultInterval = 5 * time.Minute
	DefaultGrace    = 2 * time.Minute
	DefaultJitter   = 0.1
)

func (t Timing) withDefaults() Timing {
	if t.Interval <= 0 {
		t.Interval = DefaultInterval
	}
	if t.Jitter <= 0 {
		t.Jitter = DefaultJitter
	}
	if t.Grace <= 0 {
		t.Grace = DefaultGrace
	}
	t.Onboarding = max(t.Onboarding, t.Grace)
	if t.RetryBase <= 0 {
		t.RetryBase = 2 * time.Second
	}
	if t.RetryMax <= 0 {
		t.RetryMax = min(time.Minute, t.Interval)
	}
	t.RetryBase = min(t.RetryBase, t.RetryMax)
	return t
}

func (t Timing) validate() error {
	switch {
	case t.Interval < time.Second:
		return fmt.Errorf("attest-worker: interval %s is below 1s", t.Interval)
	case t.Jitter < 0 || t.Jitter > 0.5:
		return fmt.Errorf("attest-worker: jitter %g is outside 0..0.5", t.Jitter)
	case t.Grace < 0:
		return fmt.Errorf("attest-worker: negative grace %s", t.Grace)
	}
	return nil
}

// nextDue is the due time of the attestation after one at now: one
// interval later, moved by at most Jitter × Interval toward the VM's slot,
// a fixed phase within the interval derived from its VM key. A fleet whose
// attestations bunched up (VMs registered at once, everything due at once
// after an outage) thereby spreads out evenly over the interval within a
// few intervals, while no gap is ever shorter or longer than the interval
// ± jitter. Once at its slot, a VM stays there, and a late attestation is
// pulled back to it.
func (t Timing) nextDue(vm string, now time.Time) time.Time {
	target := now.Add(t.Interval)
	iv := int64(t.Interval)
	h := fnv.New64a()
	h.Write([]byte(vm))
	phase := int64(h.Sum64() % uint64(iv))
	cur := target.UnixNano() % iv
	if cur < 0 {
		cur += iv
	}
	d := phase - cur // move target onto the slot, the shorter way round
	switch {
	case d > iv/2:
		d -= iv
	case d < -iv/2:
		d += iv
	}
	step := int64(float64(iv) * t.Jitter)
	d = max(-step, min(step, d))
	return target.Add(time.Duration(d))
}

// retryDelay is the backoff before attempt failures+1: RetryBase doubling
// per consecutive failure, capped at RetryMax, with ±20% jitter.
func (t Timing) retryDelay(failures int) time.Duration {
	d := t.RetryBase
	for i := 1; i < failures && d < t.RetryMax; i++ {
		d *= 2
	}
	d = min(d, t.RetryMax)
	j := (rand.Float64()*0.4 - 0.2) * float64(d)
	return d + time.Duration(j)
}

// attempt is the outcome of one challenge of one VM.
type attempt struct {
	VMKey string
	JobID string
	DueAt time.Time // when this attestation became due
	At    time.Time // when the attempt ended
	// ChallengedAt is when its challenge was sent: the age of its
	// evidence (zero in attempts that sent none).
	ChallengedAt time.Time
	Worker       string
	ResourceID   string
	VMID         string
	// Verdict is the appraisal of the evidence, nil when there was none
	// (no answer, a refusal, or evidence that could not be appraised).
	Verdict *events.Verdict
	// Failure says why there is no verdict.
	Failure events.Reason
	// KeepStatus records the attempt without changing the status: a
	// scheduled attempt that finished after the VM was stopped or deleted.
	KeepStatus bool
	// VMIDNote, when set, says why the attempt was made without a vmId:
	// the VM has waited for it since AwaitingVMIDSince, past the
	// onboarding limit. It is added to the status's reasons.
	VMIDNote          events.Reason
	AwaitingVMIDSince time.Time
}

// outcome is the status record after an attempt and what follows from it.
type outcome struct {
	Status  events.VMStatus
	From    events.Status
	Changed bool
	Retry   bool // the next attempt is a retry after a failure
	// Stale says the attempt's challenge is older than the one the
	// status rests on: nothing changed.
	Stale bool
}

// applyAttempt computes the status record that follows prev (exists says
// whether there was one) after attempt a.
func applyAttempt(prev events.VMStatus, exists bool, a attempt, t Timing) outcome {
	if exists && a.ChallengedAt.Before(prev.LastChallengeAt) && !contraindicated(a) {
		// Evidence older than the evidence the status rests on: an
		// affirming verdict (or a failure) on older evidence, appraised
		// later, never undoes the verdict on newer evidence. A
		// contraindicated verdict applies whatever its age: a worker whose
		// clock runs ahead must not make the others' findings count for
		// nothing.
		return outcome{Status: prev, From: prev.Status, Stale: true}
	}
	st := prev
	if !exists {
		st = events.VMStatus{VMKey: a.VMKey, Status: events.StatusPending, Since: a.At}
	}
	from := st.Status
	st.VMKey = a.VMKey
	if a.ResourceID != "" {
		st.ResourceID = a.ResourceID
	}
	if a.VMID != "" {
		st.VMID = a.VMID
		st.AwaitingVMIDSince = time.Time{}
	} else if a.VMIDNote.Code != "" && st.AwaitingVMIDSince.IsZero() {
		st.AwaitingVMIDSince = a.AwaitingVMIDSince
	}
	st.LastJobID = a.JobID
	st.LastAttemptAt = a.At
	if a.ChallengedAt.After(st.LastChallengeAt) {
		st.LastChallengeAt = a.ChallengedAt
	}
	st.UpdatedAt = a.At
	st.Worker = a.Worker

	to := from
	retry := false
	// The next interval counts from when this attestation was due, so that
	// a late start does not push every later one back; an attestation more
	// than half an interval late counts from now.
	base := a.At
	if !a.DueAt.IsZero() && a.DueAt.Before(a.At) && a.At.Sub(a.DueAt) < t.Interval/2 {
		base = a.DueAt
	}
	v := a.Verdict
	if v != nil {
		st.LastVerdictID = v.ID
		st.LastVerdictStatus = v.Status
		st.LastVerdictAt = a.At
		if v.Platform != "" {
			st.Platform = v.Platform
		}
	}
	switch {
	case v != nil && (v.Status == events.VerdictAffirming || v.Status == events.VerdictWarning):
		to = events.StatusTrusted
		if v.Status == events.VerdictWarning {
			to = events.StatusWarning
		}
		st.LastGoodAt = a.At
		st.ConsecutiveFailures = 0
		st.OverdueSince = time.Time{}
		st.Reasons = withNote(v.Reasons, a.VMIDNote)
		st.NextDueAt = t.nextDue(a.VMKey, base)
	case v != nil && v.Status == events.VerdictContraindicated:
		to = events.StatusUntrusted
		st.ConsecutiveFailures = 0
		st.OverdueSince = time.Time{}
		st.Reasons = withNote(v.Reasons, a.VMIDNote)
		st.NextDueAt = t.nextDue(a.VMKey, base)
	default:
		// No appraisable evidence.
		retry = true
		st.ConsecutiveFailures++
		if st.OverdueSince.IsZero() {
			st.OverdueSince = a.DueAt
			if st.OverdueSince.IsZero() || st.OverdueSince.After(a.At) {
				st.OverdueSince = a.At
			}
		}
		failure := a.Failure
		if failure.Code == "" && v != nil {
			failure = events.Reason{Code: "verifier.no_appraisal", Message: "the evidence could not be appraised"}
			if len(v.Reasons) > 0 {
				failure = v.Reasons[0]
			}
		}
		switch {
		case from == events.StatusUntrusted:
			// Silence does not make an untrusted VM any better; keep the
			// reasons it became untrusted for.
		case a.At.Sub(st.OverdueSince) > t.graceOf(st):
			to = events.StatusStale
			st.Reasons = withNote([]events.Reason{
				{Code: "evidence.stale", Message: fmt.Sprintf("no valid evidence since %s (%s)", st.OverdueSince.UTC().Format(time.RFC3339), t.graceName(st))},
				failure,
			}, a.VMIDNote)
		default:
			to = events.StatusUnreachable
			st.Reasons = withNote([]events.Reason{failure}, a.VMIDNote)
		}
		st.NextDueAt = a.At.Add(t.retryDelay(st.ConsecutiveFailures))
	}
	if a.KeepStatus {
		to = from
	}
	changed := to != from
	if changed {
		st.PreviousStatus = from
		st.Since = a.At
		st.ChangedBy = a.JobID
	}
	st.Status = to
	return outcome{Status: st, From: from, Changed: changed, Retry: retry}
}

// withNote is reasons followed by note, when note is set (a new slice:
// reasons may be a verdict's).
func withNote(reasons []events.Reason, note events.Reason) []events.Reason {
	if note.Code == "" {
		return reasons
	}
	return append(slices.Clip(reasons), note)
}

// contraindicated says whether a's evidence was found contraindicated.
func contraindicated(a attempt) bool {
	return a.Verdict != nil && a.Verdict.Status == events.VerdictContraindicated
}

// neverAttested says whether st is a VM that has never given valid
// evidence (nor any verdict).
func neverAttested(st events.VMStatus) bool {
	return st.LastGoodAt.IsZero() && st.LastVerdictAt.IsZero()
}

// graceOf is how long st's VM may be overdue (since st.OverdueSince)
// without valid evidence: Onboarding for a VM that never gave any, else
// Grace.
func (t Timing) graceOf(st events.VMStatus) time.Duration {
	if neverAttested(st) {
		return max(t.Onboarding, t.Grace)
	}
	return t.Grace
}

// graceName names graceOf(st) for a status reason.
func (t Timing) graceName(st events.VMStatus) string {
	if neverAttested(st) {
		return fmt.Sprintf("onboarding limit %s", t.graceOf(st))
	}
	return fmt.Sprintf("grace %s", t.Grace)
}

// overdue is since when st's VM has gone without the attestation that was
// due, how long it may, and that allowance named for a status reason:
// since OverdueSince for graceOf(st); else since NextDueAt (a VM whose
// first attestation waited for its vmId until its onboarding limit), or
// Since, for the grace period.
func (t Timing) overdue(st events.VMStatus) (since time.Time, allowed time.Duration, name string) {
	if !st.OverdueSince.IsZero() {
		return st.OverdueSince, t.graceOf(st), t.graceName(st)
	}
	since = st.NextDueAt
	if since.IsZero() {
		since = st.Since
	}
	return since, t.Grace, fmt.Sprintf("grace %s", t.Grace)
}

// staleByDeadline reports whether a VM that no attempt has reached should be
// marked stale at now: it has been overdue for longer than its allowance
// (overdue).
func staleByDeadline(st events.VMStatus, now time.Time, t Timing) bool {
	switch st.Status {
	case events.StatusTrusted, events.StatusWarning, events.StatusUnreachable, events.StatusPending:
	default:
		return false
	}
	since, allowed, _ := t.overdue(st)
	return !since.IsZero() && now.Sub(since) > allowed
}

// markStale is the record of a VM made stale by the sweep at now.
func markStale(st events.VMStatus, now time.Time, t Timing, by, worker string) outcome {
	from := st.Status
	since, _, allowance := t.overdue(st)
	st.OverdueSince = since
	st.Reasons = []events.Reason{{Code: "evidence.stale", Message: fmt.Sprintf("no attestation since the one due at %s (%s)", since.UTC().Format(time.RFC3339), allowance)}}
	st.PreviousStatus = from
	st.Status = events.StatusStale
	st.Since = now
	st.ChangedBy = by
	st.UpdatedAt = now
	st.Worker = worker
	return outcome{Status: st, From: from, Changed: true}
}

// AlertKeyAttestation is the condition of a VM's attestation alerts
// (events.AlertKey).
const AlertKeyAttestation = "attestation"

// alertsFor are the alerts a status change raises.
func alertsFor(o outcome, source string) []events.Alert {
	if !o.Changed {
		return nil
	}
	st := o.Status
	// Every attestation alert of a VM is about one condition, its key
	// AlertKeyAttestation: untrusted, stale and never attested fire it,
	// attesting again resolves it.
	base := events.Alert{VMKey: st.VMKey, ResourceID: st.ResourceID, Reasons: st.Reasons, CauseID: st.ChangedBy, Source: source, At: st.Since,
		Key: events.AlertKey(st.VMKey, AlertKeyAttestation), State: events.AlertFiring}
	name := st.ResourceID
	if name == "" {
		name = st.VMKey
	}
	var out []events.Alert
	switch st.Status {
	case events.StatusUntrusted:
		a := base
		a.Severity, a.Code = events.SeverityCritical, "vm.untrusted"
		a.Message = fmt.Sprintf("%s is untrusted: %s", name, reasonCodes(st.Reasons))
		out = append(out, a)
	case events.StatusStale:
		a := base
		if neverAttested(st) {
			a.Severity, a.Code = events.SeverityCritical, "vm.never_attested"
			a.Message = fmt.Sprintf("%s runs but has never attested (pending since %s); Azure refuses to start a VM without isolation, so this is suspicious", name, st.OverdueSince.UTC().Format(time.RFC3339))
		} else {
			a.Severity, a.Code = events.SeverityHigh, "vm.stale"
			a.Message = fmt.Sprintf("%s is stale: %s", name, reasonCodes(st.Reasons))
		}
		out = append(out, a)
	case events.StatusRetired:
		// A deleted VM's condition ends with it.
		if o.From == events.StatusUntrusted || o.From == events.StatusStale {
			a := base
			a.Severity, a.Code, a.State = events.SeverityInfo, "vm.retired", events.AlertResolved
			a.Message = fmt.Sprintf("%s was deleted while %s", name, o.From)
			out = append(out, a)
		}
	case events.StatusTrusted, events.StatusWarning:
		if o.From == events.StatusUntrusted || o.From == events.StatusStale {
			a := base
			a.Severity, a.Code, a.State = events.SeverityInfo, "vm.recovered", events.AlertResolved
			a.Message = fmt.Sprintf("%s attests again (%s after %s)", name, st.Status, o.From)
			out = append(out, a)
		}
	}
	return out
}

func reasonCodes(rs []events.Reason) string {
	if len(rs) == 0 {
		return "no reason given"
	}
	s := ""
	for i, r := range rs {
		if i > 0 {
			s += ", "
		}
		s += r.Code
	}
	return s
}

// derivedID is a stable event id for the event of kind derived from the
// event or job with id from: publishing it again after a crash is absorbed
// by JetStream's de-duplication.
func derivedID(kind, from string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(kind))
	h.Write([]byte{0})
	h.Write([]byte(from))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return kind + "-" + hex.EncodeToString(h.Sum(nil)[:16])
}
