// Package auditor writes every event of VIGIL_EVENTS, exactly once and in
// stream order, into an append-only, tamper-evident transparency log
// (Tessera, POSIX storage, C2SP tlog-tiles layout) and publishes Ed25519
// signed checkpoints (C2SP signed notes) on vigil.audit.checkpoint.
//
// Exactly once: every entry records its stream sequence. The log, not the
// consumer, is the source of truth for progress: at start the auditor reads
// the log's tail, recreates its durable consumer at the first sequence the
// log does not account for, and skips anything already logged. A message is
// acknowledged only after Tessera has durably sequenced and integrated its
// entry (the Add future resolved), so a crash at any point either loses an
// unacknowledged message that is redelivered, or leaves a logged message
// that is skipped after restart.
//
// One writer: an exclusive flock(2) on a file in the log directory. A second
// auditor on the same directory waits as a hot standby and takes over as
// soon as the kernel releases the lock, which it does when the writer exits
// or dies.
package auditor
