// Package attestworker re-attests every running VM on a schedule: it
// challenges the VM's agent, verifies the evidence, applies policy and
// publishes the verdict and the VM's status.
package attestworker
