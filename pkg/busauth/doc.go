// Package busauth makes Vigil's NATS identity in operator mode (docs/security.md, "NATS
// permissions"): an operator, a system account and a Vigil account, one scoped signing key
// per principal whose template holds that principal's permissions, and a user for each
// service principal and for the first administrator. Agents and further administrators
// are minted on demand with their scoped key, named by their VM key or admin name, which
// the templates turn into subjects only they may use ({{name()}}).
//
// # Issuing and revoking agents
//
// What enrolls VMs issues their agents' user JWTs with an AgentIssuer, which holds the
// agents' scoped signing key and the account's public key only (LoadAgentIssuer reads
// those two files of a directory written by WriteDir): it can make agents and nothing
// else, and its JWTs carry the claims Set.IssueUser gives agents (one implementation).
//
// What revokes them holds a Revoker: a revocation key, an operator signing key used for
// nothing but re-signing the Vigil account with revocations (FileRevocationKey), the
// account's claims as they stand, and the credentials of the system account's revoker
// user (SysRevoker, CredsFile(SysRevoker)), issued by a scoped signing key of the system
// account whose template allows publishing ClaimsUpdateSubject of the Vigil account and
// subscribing to _INBOX_revoker.> only. Revoker.Push signs the account with exactly the
// revocations given (each revokes the key's JWTs issued at or before its time, to the
// second; later ones connect) besides the base's own, and requests
// $SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE, which every server of a cluster applies at
// once if it has the account loaded: the revoked users' connections are closed. A full
// resolver (nats-server's resolver type full; pkg/natsembed's) stores the pushed
// account and serves it from then on; a memory resolver's server that loads the
// account later (a restart) needs the revocations pushed again (keyguard pushes them
// at start and at every reconciliation).
//
// # Principals and inboxes
//
// The principals are the services (ingest, attest-worker, keyguard, auditor), the
// notifier and the console (readers to come), administrators and agents. Each has an
// inbox prefix of its own (InboxPrefix, AgentInboxPrefix, AdminInboxPrefix) that it
// must give nats.CustomInboxPrefix: it may subscribe to that prefix and to nothing
// else of the kind, and no principal may subscribe to _INBOX.>. Replies to a
// principal's requests, its JetStream API answers and the deliveries of its pull
// consumers therefore reach it alone. Agents' prefixes are _INBOX_agent.<vm> and
// administrators' _INBOX_admin.<name>, so that keyguard, which answers both, can be
// allowed to publish to _INBOX_agent.*.> and _INBOX_admin.*.> without the server's
// allow_responses.
//
// # Least privilege
//
// A service's permissions list the exact JetStream API subjects of its own durable
// consumers (Consumers), of the streams it reads and of its buckets; no service may
// create, update, delete or purge a stream (the attest-worker may purge
// VIGIL_SCHEDULE, which is how it cancels a VM's schedule; the server cannot restrict
// a purge to a subject). Only administrators provision. A principal that reads a
// stream through ordered consumers (whose names the client makes up) may create,
// pull from and delete any consumer of that stream except the durables of the other
// principals, which are denied by name: a service configured with another durable
// name than its default needs permissions made for it.
//
// # Attribution
//
// What administrators publish names them in a subject token their permissions pin
// to their own name, so that whoever stores or serves it learns the actor from the
// server, never from the payload: an administrator named NAME may publish a policy
// version on vigil.events.policy.<id>.NAME only and request keyguard's operator API
// on vigil.keyguard.admin.<action>.NAME only (AdminPolicySubject,
// AdminRequestSubject). Agents are pinned the same way: they may use
// vigil.keyguard.nonce.<vm> and vigil.keyguard.release.<vm> for their own VM key
// only, so that keyguard can learn the requester's VM from the subject and no
// agent can ask for (and use up) another VM's nonces.
//
// # Replies
//
// A server checks who publishes on a subject, not where a request asks its reply to
// go. A responder that answers a request's reply subject with its own permissions
// publishes wherever the requester chose: an agent could have keyguard's answer
// written into a bucket keyguard may write. keyguard is therefore not given
// allow_responses (which would let it answer anywhere, deny lists notwithstanding),
// only agents' and administrators' inboxes besides its own subjects; responders must
// still answer only a reply subject under the requester's inbox prefix (ReplyAllowed).
package busauth
