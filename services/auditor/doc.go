// Package auditor writes every Vigil event into an append-only,
// tamper-evident transparency log with signed checkpoints.
package auditor
