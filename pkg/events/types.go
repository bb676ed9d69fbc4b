package events

import (
	"encoding/json"
	"time"
)

// Event types (CloudEvents "type"). Every type is versioned; a breaking change
// gets a new type, never a changed one.
const (
	TypeRaw       = "io.vigil.ingest.raw.v1"
	TypeLifecycle = "io.vigil.vm.lifecycle.v1"
	TypeConfig    = "io.vigil.vm.config.v1"
	TypeVerdict   = "io.vigil.vm.verdict.v1"
	TypeState     = "io.vigil.vm.state.v1"
	TypeKey       = "io.vigil.vm.key.v1"
	TypePolicy    = "io.vigil.policy.v1"
	TypeAlert     = "io.vigil.alert.v1"
	TypeJob       = "io.vigil.attest.job.v1"
	// TypeSilence is an alert silence set or lifted by an administrator
	// (vigil alerts silence), on vigil.events.silence.<actor>.
	TypeSilence = "io.vigil.alert.silence.v1"
)

// Raw is an inbound Azure event stored on VIGIL_RAW before anything else
// happens to it. Event is the event exactly as received.
type Raw struct {
	Source     string          `json:"source"`      // "eventgrid", "namespace"
	Schema     string          `json:"schema"`      // "eventgrid", "cloudevents"
	EventID    string          `json:"event_id"`    // Azure's id, the de-duplication key
	ReceivedAt time.Time       `json:"received_at"` //
	Event      json.RawMessage `json:"event"`       // untouched
}

// LifecycleKind is what happened to a VM.
type LifecycleKind string

// Lifecycle kinds.
const (
	LifecycleCreated     LifecycleKind = "created"
	LifecycleUpdated     LifecycleKind = "updated"
	LifecycleStarted     LifecycleKind = "started"
	LifecycleStopped     LifecycleKind = "stopped"
	LifecycleDeallocated LifecycleKind = "deallocated"
	LifecycleRestarted   LifecycleKind = "restarted"
	LifecycleDeleted     LifecycleKind = "deleted"
	LifecycleUnavailable LifecycleKind = "unavailable"
	LifecycleAvailable   LifecycleKind = "available"
)

// Lifecycle is io.vigil.vm.lifecycle.v1.
type Lifecycle struct {
	VMKey         string        `json:"vm_key"`
	ResourceID    string        `json:"resource_id"`
	VMID          string        `json:"vm_id,omitempty"` // ARM vmId (GUID), when known
	Kind          LifecycleKind `json:"kind"`
	Subscription  string        `json:"subscription_id,omitempty"`
	ResourceGroup string        `json:"resource_group,omitempty"`
	Name          string        `json:"name,omitempty"`
	Operation     string        `json:"operation,omitempty"` // ARM operationName, e.g. Microsoft.Compute/virtualMachines/start/action
	Outcome       string        `json:"outcome,omitempty"`   // Succeeded, Failed, Canceled
	Origin        string        `json:"origin"`              // "eventgrid", "namespace", "reconcile"
	AzureEventID  string        `json:"azure_event_id,omitempty"`
	CorrelationID string        `json:"correlation_id,omitempty"`
	OccurredAt    time.Time     `json:"occurred_at"`
	// Superseded marks an event that arrived after a newer one for the
	// same VM (out of order, e.g. redelivered after a crash). It is
	// published for the record and must not change the VM's state.
	Superseded bool `json:"superseded,omitempty"`
}

// Severity of a finding or an alert.
type Severity string

// Severities, most severe first.
const (
	SeverityCritical Severity = "critical"
	SeverityHigh     Severity = "high"
	SeverityWarning  Severity = "warning"
	SeverityInfo     Severity = "info"
)

// Finding is one configuration compliance finding (docs/design.md §11).
type Finding struct {
	Code     string   `json:"code"` // e.g. "security_type.not_confidential"
	Severity Severity `json:"severity"`
	Field    string   `json:"field,omitempty"` // ARM property path
	Message  string   `json:"message"`
}

// Config is io.vigil.vm.config.v1: the configuration findings of one VM as
// observed at ObservedAt. An empty Findings list means compliant.
type Config struct {
	VMKey      string    `json:"vm_key"`
	ResourceID string    `json:"resource_id"`
	VMID       string    `json:"vm_id,omitempty"`
	Compliant  bool      `json:"compliant"`
	Findings   []Finding `json:"findings"`
	ObservedAt time.Time `json:"observed_at"`
}

// Verdict status values (EAR "ear.status").
const (
	VerdictAffirming       = "affirming"
	VerdictWarning         = "warning"
	VerdictContraindicated = "contraindicated"
	VerdictNone            = "none"
)

// TrustVector is the AR4SI trustworthiness vector of an EAR appraisal. Each
// claim is a signed 8-bit AR4SI value: 0 no claim, 1 verifier malfunction,
// 2 affirming, 3..31 further affirming values, 32..95 warning, 96..127
// contraindicated (with the per-claim meanings of the AR4SI draft).
type TrustVector struct {
	InstanceIdentity int8 `json:"instance-identity"`
	Configuration    int8 `json:"configuration"`
	Executables      int8 `json:"executables"`
	FileSystem       int8 `json:"file-system"`
	Hardware         int8 `json:"hardware"`
	RuntimeOpaque    int8 `json:"runtime-opaque"`
	StorageOpaque    int8 `json:"storage-opaque"`
	SourcedData      int8 `json:"sourced-data"`
}

// Reason is one machine-readable cause in a verdict, such as
// "snp.signature_invalid" or "policy.debug_enabled".
type Reason struct {
	Code    string `json:"code"`
	Message string `json:"message,omitempty"`
}

// TCB is the platform's trusted computing base as reported by the evidence.
type TCB struct {
	// SEV-SNP (reported TCB).
	BootLoader uint8 `json:"bootloader,omitempty"`
	TEE        uint8 `json:"tee,omitempty"`
	SNP        uint8 `json:"snp,omitempty"`
	Microcode  uint8 `json:"microcode,omitempty"`
	FMC        uint8 `json:"fmc,omitempty"` // Turin
	// TDX.
	TEETCBSVN string `json:"tee_tcb_svn,omitempty"` // hex
	MRSEAM    string `json:"mr_seam,omitempty"`     // hex
	TCBStatus string `json:"tcb_status,omitempty"`  // from PCS collateral, when checked
	// Common.
	Measurement string `json:"measurement,omitempty"` // SNP MEASUREMENT or TDX MRTD, hex
	Product     string `json:"product,omitempty"`     // Milan, Genoa, Turin, or TDX
}

// Verdict is io.vigil.vm.verdict.v1, an attestation result shaped after EAR
// (IETF draft "EAT Attestation Results").
type Verdict struct {
	ID         string `json:"id"` // unique per verdict
	VMKey      string `json:"vm_key"`
	ResourceID string `json:"resource_id,omitempty"`
	// VMID is the vmId the evidence was checked against: from ARM (ingest's
	// inventory) or an operator, never from the evidence; empty when none
	// was known.
	VMID string `json:"vm_id,omitempty"`
	// ClaimedVMID is the runtime data's vmUniqueId as the evidence states
	// it, true only when the evidence is genuine (and then equal to VMID
	// when VMID is known). It is reported, never used to decide anything.
	ClaimedVMID    string      `json:"claimed_vm_id,omitempty"`
	Platform       string      `json:"platform"`
	Status         string      `json:"status"` // affirming, warning, contraindicated, none
	TrustVector    TrustVector `json:"trust_vector"`
	Reasons        []Reason    `json:"reasons,omitempty"`
	EvidenceDigest string      `json:"evidence_digest,omitempty"` // "sha256:<hex>" of the bundle bytes
	PolicyID       string      `json:"policy_id,omitempty"`
	PolicyVersion  int         `json:"policy_version,omitempty"`
	VerifierBuild  string      `json:"verifier_build,omitempty"`
	Nonce          string      `json:"nonce,omitempty"` // base64
	TCB            *TCB        `json:"tcb,omitempty"`
	JobID          string      `json:"job_id,omitempty"`
	Attempt        int         `json:"attempt,omitempty"`
	IssuedAt       time.Time   `json:"issued_at"`
	JWS            string      `json:"jws,omitempty"` // optional ES256 compact JWS over the verdict without this field
}

// Status is the attestation status of a VM (docs/design.md §12).
type Status string

// Statuses.
const (
	StatusPending     Status = "pending"
	StatusTrusted     Status = "trusted"
	StatusWarning     Status = "warning"
	StatusUntrusted   Status = "untrusted"
	StatusUnreachable Status = "unreachable"
	StatusStale       Status = "stale"
	StatusSuspended   Status = "suspended"
	StatusRetired     Status = "retired"
)

// Releasable reports whether keys may be released to a VM in status s.
func (s Status) Releasable() bool { return s == StatusTrusted || s == StatusWarning }

// Revokes reports whether status s requires every grant of the VM to be revoked.
func (s Status) Revokes() bool {
	return s == StatusUntrusted || s == StatusStale || s == StatusRetired
}

// State is io.vigil.vm.state.v1: a status transition of one VM.
type State struct {
	VMKey      string    `json:"vm_key"`
	ResourceID string    `json:"resource_id,omitempty"`
	VMID       string    `json:"vm_id,omitempty"`
	From       Status    `json:"from"`
	To         Status    `json:"to"`
	Reasons    []Reason  `json:"reasons,omitempty"`
	VerdictID  string    `json:"verdict_id,omitempty"`
	ChangedAt  time.Time `json:"changed_at"`
}

// KeyAction is what keyguard did to a VM's key grant.
type KeyAction string

// Key actions.
const (
	KeyGranted   KeyAction = "granted"
	KeyRevoked   KeyAction = "revoked"
	KeyRestored  KeyAction = "restored"
	KeyReleased  KeyAction = "released"
	KeySuspended KeyAction = "suspended"
	// KeyEnrolled: keyguard issued the VM's agent bus credentials
	// (backend "nats") after verifying its enrollment evidence;
	// KeyEnrollRefused: it refused to (Reason: the refusal code and why).
	// A revocation of the credentials is KeyRevoked on backend "nats".
	KeyEnrolled      KeyAction = "enrolled"
	KeyEnrollRefused KeyAction = "enroll_refused"
)

// Key is io.vigil.vm.key.v1.
type Key struct {
	VMKey     string    `json:"vm_key"`
	VMID      string    `json:"vm_id,omitempty"`
	Action    KeyAction `json:"action"`
	KeyName   string    `json:"key_name,omitempty"`
	Backend   string    `json:"backend,omitempty"` // "local", "azure-keyvault"
	Reason    string    `json:"reason,omitempty"`
	Actor     string    `json:"actor,omitempty"`      // "keyguard" or an operator
	CauseID   string    `json:"cause_id,omitempty"`   // id of the event that caused the action
	LatencyMS float64   `json:"latency_ms,omitempty"` // from the cause's time to the action taking effect
	At        time.Time `json:"at"`
}

// Policy is io.vigil.policy.v1: a policy version change.
type Policy struct {
	Name     string    `json:"name"`
	Version  int       `json:"version"`
	Digest   string    `json:"digest"` // "sha256:<hex>" of Document
	Document string    `json:"document"`
	Actor    string    `json:"actor,omitempty"`
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// Alert is io.vigil.alert.v1.
type Alert struct {
	Severity   Severity  `json:"severity"`
	Code       string    `json:"code"` // e.g. "vm.untrusted", "vm.stale", "vm.never_attested", "bus.poison_message"
	VMKey      string    `json:"vm_key,omitempty"`
	ResourceID string    `json:"resource_id,omitempty"`
	Message    string    `json:"message"`
	Reasons    []Reason  `json:"reasons,omitempty"`
	CauseID    string    `json:"cause_id,omitempty"`
	Source     string    `json:"source,omitempty"` // service that raised it
	At         time.Time `json:"at"`
	// Key names the condition the alert is about, stable while it lasts
	// ("<vm>/attestation", "<vm>/config.<code>"): the resolve of a
	// condition has the key of its firing. Alerts without a key (older
	// producers, one-off alerts) have no resolve.
	Key string `json:"key,omitempty"`
	// State is firing or resolved; empty is firing (alerts published
	// before states existed).
	State AlertState `json:"state,omitempty"`
}

// AlertState is whether an alert's condition holds.
type AlertState string

// Alert states.
const (
	AlertFiring   AlertState = "firing"
	AlertResolved AlertState = "resolved"
)

// Resolved reports whether a is the resolve of its condition.
func (a Alert) Resolved() bool { return a.State == AlertResolved }

// AlertKey is the stable key of condition on vm: "<vm>/<condition>".
func AlertKey(vm, condition string) string { return vm + "/" + condition }

// Silence is io.vigil.alert.silence.v1: alerts matching Match are not
// delivered to subscriptions until Until (a lifted silence has Until at
// or before its Lifted time).
type Silence struct {
	ID      string            `json:"id"`
	Match   map[string]string `json:"match"` // alert attribute -> glob (severity, code, vm, vm_name, resource_group, key, tag.<name>)
	Reason  string            `json:"reason"`
	Actor   string            `json:"actor"`
	Created time.Time         `json:"created"`
	Until   time.Time         `json:"until"`
	Lifted  bool              `json:"lifted,omitempty"`
}

// Job is io.vigil.attest.job.v1: a request to attest one VM.
type Job struct {
	VMKey       string    `json:"vm_key"`
	ResourceID  string    `json:"resource_id,omitempty"`
	VMID        string    `json:"vm_id,omitempty"`
	Reason      string    `json:"reason"` // "created", "started", "restarted", "reconcile" (ingest); "schedule", "retry", "sweep" (attest-worker)
	Attempt     int       `json:"attempt,omitempty"`
	RequestedAt time.Time `json:"requested_at"`
	DueAt       time.Time `json:"due_at,omitzero"`
}

// VM is the inventory record of one VM in the vigil-vms bucket, keyed by VM key.
type VM struct {
	VMKey          string        `json:"vm_key"`
	ResourceID     string        `json:"resource_id"`
	VMID           string        `json:"vm_id,omitempty"`
	Subscription   string        `json:"subscription_id,omitempty"`
	ResourceGroup  string        `json:"resource_group,omitempty"`
	Name           string        `json:"name,omitempty"`
	Location       string        `json:"location,omitempty"`
	Size           string        `json:"size,omitempty"`
	SecurityType   string        `json:"security_type,omitempty"`
	PowerState     string        `json:"power_state,omitempty"` // running, stopped, deallocated, ...
	Lifecycle      LifecycleKind `json:"lifecycle,omitempty"`
	Deleted        bool          `json:"deleted,omitempty"`
	Findings       []Finding     `json:"findings,omitempty"`
	EventTime      time.Time     `json:"event_time"`                // time of the newest event applied; older events never roll back
	EventID        string        `json:"event_id,omitempty"`        // id of the newest event applied (a re-delivery of it changes nothing)
	Platform       string        `json:"platform,omitempty"`        // azure-sev-snp or azure-tdx, from the size series
	OSImage        string        `json:"os_image,omitempty"`        // publisher:offer:sku, or the image resource ID
	LiveMigratedAt time.Time     `json:"live_migrated_at,omitzero"` // when Azure last reported a live migration of the VM
	EnrichedAt     time.Time     `json:"enriched_at,omitzero"`
	UpdatedAt      time.Time     `json:"updated_at"`
	// Tags are the VM's Azure tags as ARM last showed them (an enrichment
	// read or the reconcile list), bounded as Azure bounds them: at most
	// 50, names of at most 512 characters, values of at most 256. TagsAt
	// is when that ARM read started: an older read never replaces them.
	Tags   map[string]string `json:"tags,omitempty"`
	TagsAt time.Time         `json:"tags_at,omitzero"`
	// Trace is the W3C traceparent of the ingest operation that last wrote
	// the record, so that a worker acting on the write (the attest-worker
	// when a vmId arrives) continues that trace. Observability only:
	// nothing is decided from it.
	Trace string `json:"trace,omitempty"`
}

// VMStatus is the record of one VM in the vigil-status bucket, keyed by VM key.
type VMStatus struct {
	VMKey             string    `json:"vm_key"`
	ResourceID        string    `json:"resource_id,omitempty"`
	VMID              string    `json:"vm_id,omitempty"`
	Status            Status    `json:"status"`
	Since             time.Time `json:"since"`
	Reasons           []Reason  `json:"reasons,omitempty"`
	LastVerdictID     string    `json:"last_verdict_id,omitempty"`
	LastVerdictStatus string    `json:"last_verdict_status,omitempty"`
	LastVerdictAt     time.Time `json:"last_verdict_at,omitzero"`
	LastGoodAt        time.Time `json:"last_good_at,omitzero"`
	LastAttemptAt     time.Time `json:"last_attempt_at,omitzero"`
	// LastChallengeAt is when the newest challenge of the attempts applied
	// was sent: an attempt on an older challenge (two of a VM's attempts
	// overlapped and it finished last) changes nothing unless its verdict
	// is contraindicated, so that older evidence never overrides newer
	// evidence's verdict.
	LastChallengeAt     time.Time `json:"last_challenge_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures,omitempty"`
	NextDueAt           time.Time `json:"next_due_at,omitzero"`
	UpdatedAt           time.Time `json:"updated_at"`
	// Written by the attest-worker; all optional.
	Platform       string    `json:"platform,omitempty"`        // platform of the last evidence
	PreviousStatus Status    `json:"previous_status,omitempty"` // status before the transition at Since
	ChangedBy      string    `json:"changed_by,omitempty"`      // id of the job or event that made the transition at Since
	LastJobID      string    `json:"last_job_id,omitempty"`     // id of the last job whose outcome is recorded here
	OverdueSince   time.Time `json:"overdue_since,omitzero"`    // due time of an attestation still without valid evidence
	Worker         string    `json:"worker,omitempty"`          // worker instance that wrote this record
	// AwaitingVMIDSince is set while the VM's first attestation waits for
	// ARM to report its vmId (the worker's onboarding limit bounds the
	// wait; NextDueAt is then the limit): since when the VM has been
	// waiting. An attempt with a vmId clears it; one made without, after
	// the limit, keeps it, and the status's reasons say the vmId never came.
	AwaitingVMIDSince time.Time `json:"awaiting_vm_id_since,omitzero"`
}

// Challenge is the request sent to vigil.agent.<vm>.challenge. The agent
// answers with a vigil.evidence/v1 bundle whose TPM quote carries Nonce as
// its extraData, or with a bus.ReplyError.
type Challenge struct {
	VMKey    string    `json:"vm_key"`
	Nonce    []byte    `json:"nonce"` // 32 random bytes, used once (base64 in JSON)
	Deadline time.Time `json:"deadline,omitzero"`
}
