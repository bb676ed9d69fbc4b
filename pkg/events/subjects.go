package events

import "strings"

// Subjects and subject builders of docs/design.md §2.
const (
	SubjectRawAll        = "vigil.ingest.raw.>"
	SubjectEventsAll     = "vigil.events.>"
	SubjectVMEventsAll   = "vigil.events.vm.>"
	SubjectJobsAll       = "vigil.jobs.>"
	SubjectAttestJobsAll = "vigil.jobs.attest.*"
	SubjectAlertsAll     = "vigil.alert.>"
	// SubjectAlertsDLQAll is VIGIL_ALERTS_DLQ's: the notifier's dead
	// letters (vigil.alertdlq.dead.<subscription>) and the deliveries an
	// administrator asks for again (vigil.alertdlq.replay.<subscription>).
	SubjectAlertsDLQAll    = "vigil.alertdlq.>"
	SubjectAlertsDeadAll   = "vigil.alertdlq.dead.*"
	SubjectAlertsReplayAll = "vigil.alertdlq.replay.*"
	SubjectCheckpoint      = "vigil.audit.checkpoint"
	SubjectScheduleAll     = "vigil.schedule.>"
	SubjectScheduleDue     = "vigil.schedule.due.*"
	// SubjectSweepSchedule holds the fleet-wide repeating schedule that
	// fires SubjectSweepDue: one attest-worker then checks every VM for a
	// missed deadline.
	SubjectSweepSchedule = "vigil.schedule.fleet.sweep"
	SubjectSweepDue      = "vigil.schedule.due.sweep"

	// SubjectKeyguardNonceAll and SubjectKeyguardReleaseAll match every
	// VM's vigil.keyguard.{nonce,release}.<vm> (KeyguardNonceSubject,
	// KeyguardReleaseSubject), which keyguard serves; an agent may use its
	// own VM's only.
	SubjectKeyguardNonceAll   = subjectKeyguardNoncePrefix + ".*"
	SubjectKeyguardReleaseAll = subjectKeyguardReleasePrefix + ".*"
)

// Prefixes of the pinned key release subjects; no one serves or publishes
// on a prefix itself.
const (
	subjectKeyguardNoncePrefix   = "vigil.keyguard.nonce"
	subjectKeyguardReleasePrefix = "vigil.keyguard.release"
)

// KeyguardNonceSubject is vigil.keyguard.nonce.<vm>.
func KeyguardNonceSubject(vm string) string { return subjectKeyguardNoncePrefix + "." + vm }

// KeyguardReleaseSubject is vigil.keyguard.release.<vm>.
func KeyguardReleaseSubject(vm string) string { return subjectKeyguardReleasePrefix + "." + vm }

// Kinds of per-VM event subjects: vigil.events.vm.<vm>.<kind>.
const (
	KindLifecycle = "lifecycle"
	KindConfig    = "config"
	KindVerdict   = "verdict"
	KindState     = "state"
	KindKey       = "key"
)

// RawSubject is where ingest stores an untouched inbound event from source
// (for example "eventgrid", "namespace", "reconcile").
func RawSubject(source string) string { return "vigil.ingest.raw." + Token(source) }

// VMEventSubject is vigil.events.vm.<vm>.<kind>.
func VMEventSubject(vm, kind string) string { return "vigil.events.vm." + vm + "." + kind }

// LifecycleSubject is vigil.events.vm.<vm>.lifecycle.
func LifecycleSubject(vm string) string { return VMEventSubject(vm, KindLifecycle) }

// ConfigSubject is vigil.events.vm.<vm>.config.
func ConfigSubject(vm string) string { return VMEventSubject(vm, KindConfig) }

// VerdictSubject is vigil.events.vm.<vm>.verdict.
func VerdictSubject(vm string) string { return VMEventSubject(vm, KindVerdict) }

// StateSubject is vigil.events.vm.<vm>.state.
func StateSubject(vm string) string { return VMEventSubject(vm, KindState) }

// KeySubject is vigil.events.vm.<vm>.key.
func KeySubject(vm string) string { return VMEventSubject(vm, KindKey) }

// PolicySubject is vigil.events.policy.<id>.<actor>, where a version of
// policy id is published by actor (in operator mode the administrator's
// name, which the server pins: busauth.AdminPolicySubject). Followers learn
// the actor from this token, never from the payload. (The unpinned
// vigil.events.policy.<id> of earlier releases is no longer read.)
func PolicySubject(id, actor string) string {
	return "vigil.events.policy." + Token(id) + "." + actor
}

// PolicyVersionsFilter is vigil.events.policy.<id>.*: every version of
// policy id, whoever published it.
func PolicyVersionsFilter(id string) string { return "vigil.events.policy." + Token(id) + ".*" }

// PolicyActorFromSubject returns the actor token of a
// vigil.events.policy.<id>.<actor> subject, or "".
func PolicyActorFromSubject(subject string) string {
	parts := strings.Split(subject, ".")
	if len(parts) == 5 && parts[0] == "vigil" && parts[1] == "events" && parts[2] == "policy" {
		return parts[4]
	}
	return ""
}

// ValidSubjectToken reports whether s can be a single subject token: not
// empty, and without '.', '*', '>' or white space.
func ValidSubjectToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ".*> \t\r\n")
}

// AlertDLQSubject is vigil.alertdlq.dead.<subscription>: an alert the
// notifier could not deliver to the subscription.
func AlertDLQSubject(subscription string) string { return "vigil.alertdlq.dead." + Token(subscription) }

// AlertReplaySubject is vigil.alertdlq.replay.<subscription>: an alert
// an administrator asks the notifier to deliver to the subscription again
// (vigil alerts dlq replay, vigil alerts test).
func AlertReplaySubject(subscription string) string {
	return "vigil.alertdlq.replay." + Token(subscription)
}

// SilenceSubject is vigil.events.silence.<actor>, where an administrator
// records the silences it sets and lifts (the server pins actor to the
// administrator's name: busauth).
func SilenceSubject(actor string) string { return "vigil.events.silence." + Token(actor) }

// AttestJobSubject is vigil.jobs.attest.<vm>.
func AttestJobSubject(vm string) string { return "vigil.jobs.attest." + vm }

// ScheduleSubject is vigil.schedule.vm.<vm>: the VM's pending message
// schedule (at most one; a new one replaces it).
func ScheduleSubject(vm string) string { return "vigil.schedule.vm." + vm }

// ScheduleDueSubject is vigil.schedule.due.<vm>, where the VM's schedule
// fires.
func ScheduleDueSubject(vm string) string { return "vigil.schedule.due." + vm }

// ChallengeSubject is vigil.agent.<vm>.challenge.
func ChallengeSubject(vm string) string { return "vigil.agent." + vm + ".challenge" }

// AlertSubject is vigil.alert.<severity>.<vm>. A fleet-wide alert uses the
// VM token "fleet".
func AlertSubject(severity Severity, vm string) string {
	if vm == "" {
		vm = "fleet"
	}
	return "vigil.alert." + string(severity) + "." + vm
}

// VMFromSubject returns the VM key of a vigil.events.vm.<vm>.*,
// vigil.jobs.attest.<vm>, vigil.agent.<vm>.*, vigil.alert.*.<vm> or
// vigil.schedule.{vm,due}.<vm> subject, or "".
func VMFromSubject(subject string) string {
	parts := strings.Split(subject, ".")
	switch {
	case len(parts) == 5 && parts[1] == "events" && parts[2] == "vm":
		return parts[3]
	case len(parts) == 4 && parts[1] == "jobs" && parts[2] == "attest":
		return parts[3]
	case len(parts) == 4 && parts[1] == "agent":
		return parts[2]
	case len(parts) == 4 && parts[1] == "alert":
		return parts[3]
	case len(parts) == 4 && parts[1] == "schedule" && (parts[2] == "vm" || parts[2] == "due") && ValidVMKey(parts[3]):
		return parts[3]
	}
	return ""
}

// Token turns s into a single safe NATS subject token: lower case, with every
// character outside [a-z0-9_-] replaced by '_'. An empty s becomes "_".
func Token(s string) string {
	if s == "" {
		return "_"
	}
	b := []byte(strings.ToLower(s))
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '_'
		}
	}
	return string(b)
}
