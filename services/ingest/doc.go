// Package ingest turns Azure VM lifecycle events (Event Grid push, Event Grid
// namespace pull, ARM reconcile) into Vigil lifecycle events, configuration
// findings and attestation jobs.
package ingest
