// Package keyguard binds key release to attestation: it releases keys only to
// VMs with a fresh good verdict and revokes them the moment a VM is untrusted,
// stale or deleted. It also releases the agents' bus credentials by the same
// rule (enrollment by attestation, pkg/enroll) and revokes them when a VM
// fails attestation, so that such a VM loses the bus as well as its keys.
package keyguard
