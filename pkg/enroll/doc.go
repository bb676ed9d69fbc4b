// Package enroll is the protocol by which a VM's agent earns its bus
// credentials by attestation (docs/design.md §19, docs/security.md
// "Agent enrollment"). It is the key release protocol of pkg/keyrelease
// with a NATS user JWT as the released value, spoken over HTTP because the
// agent has no bus credentials yet.
//
// The exchange:
//
//  1. The agent makes an nkey user key pair inside the guest; its seed
//     never leaves the process.
//  2. It asks keyguard for an enrollment nonce: POST PathNonce with a
//     NonceRequest, answered by a NonceResponse. keyguard stores the nonce
//     for the VM, for enrollment only (a release nonce does not enroll and
//     an enrollment nonce releases nothing).
//  3. Its vTPM quotes over Binding(vm, nonce, public nkey) as extraData;
//     it sends the vigil.evidence/v1 bundle with the public key: POST
//     PathEnroll with a Request.
//  4. keyguard consumes the nonce, checks that ARM knows the VM and its
//     vmId, that the VM is neither untrusted, suspended nor retired and
//     holds no revoked grant, verifies the bundle against the binding,
//     requires its vmUniqueId to be the vmId, appraises it under the
//     policy in force, and answers with a user JWT for the public key,
//     named by the VM key and signed with the agents' scoped signing key
//     (Response). Every decision but a rate-limit refusal is audited.
//
// The JWT alone is worthless: connecting needs the seed. The agent renews
// it the same way before it expires. A refusal is a *Refusal with one of
// the Code* constants; Client performs the whole exchange.
package enroll
