// Package ingest turns Azure VM lifecycle events (Event Grid push, Event Grid
// namespace pull, ARM reconcile) into Vigil lifecycle events, configuration
// findings and attestation jobs (docs/design.md §2, §11, §18).
//
// Inbound events are stored untouched on VIGIL_RAW before they are
// acknowledged to Azure (a webhook answers 200 only when every event of the
// delivery is stored; a namespace batch is acknowledged only then). A
// durable consumer of VIGIL_RAW normalises them into lifecycle events on
// vigil.events.vm.<vm>.lifecycle, enqueues attestation jobs, and keeps the
// inventory in the vigil-vms bucket by compare and set, so that an event
// older than what is known never rolls a VM back. Enrichment reads each VM
// from ARM within its throttling budgets and publishes configuration
// findings; reconciliation lists every VM of the configured subscriptions
// and heals what events missed.
package ingest
