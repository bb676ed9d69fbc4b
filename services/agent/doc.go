// Package agent is the in-guest evidence agent: it answers attestation
// challenges with a vigil.evidence/v1 bundle from the VM's vTPM.
package agent
