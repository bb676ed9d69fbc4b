// Package keyrelease is the key release protocol between a VM's agent and
// keyguard's local release service (docs/design.md §9, §15).
//
// The exchange, over NATS request/reply:
//
//  1. The agent generates an ephemeral HPKE key pair and asks
//     vigil.keyguard.nonce.<vm> for a nonce (NonceRequest -> NonceResponse).
//     keyguard stores the nonce, bound to the VM, for a short time.
//  2. The agent has its vTPM quote over Binding(nonce, suite, public key) as
//     extraData and sends the resulting vigil.evidence/v1 bundle (whose
//     "nonce" is the issued nonce) with the public key to
//     vigil.keyguard.release.<vm> (ReleaseRequest). The verifier checks it with
//     evidence.Expect{Nonce: nonce, ExtraData: Binding(...)}.
//  3. keyguard consumes the nonce (once, on every replica), verifies the
//     bundle against that binding and the VM's vmId, checks that the VM's
//     status is trusted or warning and its grant is not revoked or
//     suspended, and answers with the secret sealed to the public key with
//     HPKE (RFC 9180), info = Info(vm, key name, nonce) (ReleaseResponse).
//
// Only the holder of the ephemeral private key (inside the attested VM) can
// open the answer, and the quote proves that key was chosen by the attested
// VM for this very nonce. Client performs the whole exchange.
//
// A refusal arrives as a *bus.ReplyError whose Code is one of the Code*
// constants.
package keyrelease
