// Package keyguard binds key release to attestation: it releases keys only to
// VMs with a fresh good verdict and revokes them the moment a VM is untrusted,
// stale or deleted.
package keyguard
