// Package agent is the in-guest evidence agent: it answers attestation
// challenges with a vigil.evidence/v1 bundle from the VM's vTPM, releases
// keys from keyguard (Release) and earns and renews its bus credentials by
// attestation (Enrollment).
package agent
