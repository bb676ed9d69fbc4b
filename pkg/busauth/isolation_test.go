package busauth_test

import (
	"slices"
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// Short names for the principals in the tables below.
const (
	I = busauth.Ingest
	W = busauth.AttestWorker
	K = busauth.Keyguard
	A = busauth.Auditor
	N = busauth.Notifier
	C = busauth.Console
	D = busauth.Admin
	G = busauth.Agent // the agent of vmA
)

// services are the principals that use JetStream.
var services = []busauth.Principal{I, W, K, A, N, C, D}

// probe is a subject and the principals that may use it; every other
// principal must be refused.
type probe struct {
	what    string
	subject string
	may     []busauth.Principal
}

// publishProbes cover every subject family of docs/design.md §2, the
// inboxes, the buckets, the stream administration API and the other
// principals' consumers. A probe's body is not JSON, so that an allowed
// JetStream API request fails without changing anything.
func publishProbes() []probe {
	p := []probe{
		{"raw event", events.RawSubject("eventgrid"), []busauth.Principal{I}},
		{"lifecycle event", events.LifecycleSubject(vmB), []busauth.Principal{I}},
		{"configuration findings", events.ConfigSubject(vmB), []busauth.Principal{I}},
		{"verdict", events.VerdictSubject(vmB), []busauth.Principal{W}},
		{"status change", events.StateSubject(vmB), []busauth.Principal{W}},
		{"key event", events.KeySubject(vmB), []busauth.Principal{K}},
		{"policy version without actor", "vigil.events.policy.default", nil},
		{"policy version as itself", busauth.AdminPolicySubject("default", busauth.DefaultAdminName), []busauth.Principal{D}},
		{"policy version as another admin", busauth.AdminPolicySubject("default", "mallory"), nil},
		{"attestation job", events.AttestJobSubject(vmB), []busauth.Principal{I, W}},
		{"schedule", events.ScheduleSubject(vmB), []busauth.Principal{W}},
		{"fired schedule", events.ScheduleDueSubject(vmB), nil},
		{"sweep schedule", events.SubjectSweepSchedule, []busauth.Principal{W}},
		{"VM alert", events.AlertSubject(events.SeverityHigh, vmB), []busauth.Principal{I, W, K}},
		{"fleet alert", events.AlertSubject(events.SeverityCritical, ""), []busauth.Principal{I, W, K, A, N}},
		{"checkpoint", events.SubjectCheckpoint, []busauth.Principal{A}},
		{"challenge to another VM", events.ChallengeSubject(vmB), []busauth.Principal{W}},
		{"unpinned nonce request (earlier releases)", "vigil.keyguard.nonce", nil},
		{"unpinned release request (earlier releases)", "vigil.keyguard.release", nil},
		{"nonce request for its own VM", events.KeyguardNonceSubject(vmA), []busauth.Principal{G}},
		{"nonce request for another VM", events.KeyguardNonceSubject(vmB), nil},
		{"release request for its own VM", events.KeyguardReleaseSubject(vmA), []busauth.Principal{G}},
		{"release request for another VM", events.KeyguardReleaseSubject(vmB), nil},
		{"keyguard operator request without actor", "vigil.keyguard.admin.revoke", nil},
		{"keyguard operator request as itself", busauth.AdminRequestSubject("revoke", busauth.DefaultAdminName), []busauth.Principal{D}},
		{"keyguard operator request as another admin", busauth.AdminRequestSubject("revoke", "mallory"), nil},
		{"default inbox", "_INBOX.x", nil},
		{"keyguard's inbox", busauth.InboxPrefix(K) + ".x", nil},
		{"attest-worker's inbox", busauth.InboxPrefix(W) + ".x", nil},
		{"another VM's agent inbox", busauth.AgentInboxPrefix(vmB) + ".x", []busauth.Principal{K}},
		{"an admin's inbox", busauth.AdminInboxPrefix(busauth.DefaultAdminName) + ".x", []busauth.Principal{K}},

		{"create a stream", "$JS.API.STREAM.CREATE.EVIL", nil},
		{"create VIGIL_EVENTS", "$JS.API.STREAM.CREATE.VIGIL_EVENTS", []busauth.Principal{D}},
		{"update VIGIL_EVENTS", "$JS.API.STREAM.UPDATE.VIGIL_EVENTS", []busauth.Principal{D}},
		{"delete VIGIL_EVENTS", "$JS.API.STREAM.DELETE.VIGIL_EVENTS", nil},
		{"purge VIGIL_EVENTS", "$JS.API.STREAM.PURGE.VIGIL_EVENTS", nil},
		{"delete a message of VIGIL_EVENTS", "$JS.API.STREAM.MSG.DELETE.VIGIL_EVENTS", nil},
		{"update VIGIL_CHECKPOINTS", "$JS.API.STREAM.UPDATE.VIGIL_CHECKPOINTS", []busauth.Principal{D}},
		{"delete VIGIL_CHECKPOINTS", "$JS.API.STREAM.DELETE.VIGIL_CHECKPOINTS", nil},
		{"delete VIGIL_JOBS", "$JS.API.STREAM.DELETE.VIGIL_JOBS", nil},
		{"delete a job", "$JS.API.STREAM.MSG.DELETE.VIGIL_JOBS", nil},
		{"purge VIGIL_SCHEDULE", "$JS.API.STREAM.PURGE.VIGIL_SCHEDULE", []busauth.Principal{W}},
		{"update the grants bucket", "$JS.API.STREAM.UPDATE.KV_vigil-grants", []busauth.Principal{D}},
		{"delete the grants bucket", "$JS.API.STREAM.DELETE.KV_vigil-grants", nil},
		{"purge the grants bucket", "$JS.API.STREAM.PURGE.KV_vigil-grants", nil},
		{"purge the status bucket", "$JS.API.STREAM.PURGE.KV_vigil-status", nil},
		{"snapshot VIGIL_EVENTS", "$JS.API.STREAM.SNAPSHOT.VIGIL_EVENTS", nil},

		{"pull keyguard's deliveries", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_EVENTS.keyguard", []busauth.Principal{K}},
		{"answer keyguard's deliveries", "$JS.ACK.VIGIL_EVENTS.keyguard.1.1.1.1700000000000000000.0", []busauth.Principal{K}},
		{"re-create keyguard's consumer", "$JS.API.CONSUMER.CREATE.VIGIL_EVENTS.keyguard", []busauth.Principal{K}},
		{"re-create keyguard's consumer with a filter", "$JS.API.CONSUMER.CREATE.VIGIL_EVENTS.keyguard.vigil.events.vm.*.key", nil},
		{"delete keyguard's consumer", "$JS.API.CONSUMER.DELETE.VIGIL_EVENTS.keyguard", []busauth.Principal{K}},
		{"pull the auditor's deliveries", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_EVENTS.vigil-auditor", []busauth.Principal{A}},
		{"answer the auditor's deliveries", "$JS.ACK.VIGIL_EVENTS.vigil-auditor.1.1.1.1700000000000000000.0", []busauth.Principal{A}},
		{"pull the attest-worker's lifecycle events", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_EVENTS.attest-worker-lifecycle", []busauth.Principal{W}},
		{"pull the attest-worker's jobs", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_JOBS.attest-worker", []busauth.Principal{W}},
		{"answer the attest-worker's jobs", "$JS.ACK.VIGIL_JOBS.attest-worker.1.1.1.1700000000000000000.0", []busauth.Principal{W}},
		{"pull the attest-worker's fired schedules", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_SCHEDULE.attest-worker-schedule", []busauth.Principal{W}},
		{"pull ingest's raw events", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_RAW.vigil-ingest-normalize", []busauth.Principal{I}},
		// The notifier's durables on VIGIL_ALERTS are named after the
		// subscriptions, so the readers' ordered consumers there (any
		// name) are not kept from them (docs/security.md).
		{"pull the notifier's alerts", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_ALERTS.vigil-notifier-s1", []busauth.Principal{N, C, D}},
		{"answer the notifier's alerts", "$JS.ACK.VIGIL_ALERTS.vigil-notifier-s1.1.1.1.1700000000000000000.0", []busauth.Principal{N}},
		{"pull the notifier's replays", "$JS.API.CONSUMER.MSG.NEXT.VIGIL_ALERTS_DLQ.vigil-notifier-replay", []busauth.Principal{N}},
		{"dead-letter an alert", events.AlertDLQSubject("s1"), []busauth.Principal{N}},
		{"replay an alert", events.AlertReplaySubject("s1"), []busauth.Principal{D}},
		{"record a silence as itself", "vigil.events.silence." + busauth.DefaultAdminName, []busauth.Principal{D}},
		{"record a silence as another admin", "vigil.events.silence.mallory", nil},
		{"a consumer of VIGIL_EVENTS", "$JS.API.CONSUMER.CREATE.VIGIL_EVENTS.reader_1", []busauth.Principal{C, D}},
		{"a consumer of VIGIL_EVENTS's policies", "$JS.API.CONSUMER.CREATE.VIGIL_EVENTS.reader_1.vigil.events.policy.default", []busauth.Principal{W, K, C, D}},
		{"a consumer of VIGIL_RAW", "$JS.API.CONSUMER.CREATE.VIGIL_RAW.reader_1", []busauth.Principal{D}},
		{"a consumer of VIGIL_JOBS", "$JS.API.CONSUMER.CREATE.VIGIL_JOBS.reader_1.vigil.jobs.attest.*", []busauth.Principal{D}},

		{"JetStream account info", "$JS.API.INFO", []busauth.Principal{I, W, K, A, N, C, D}},
		{"a message of VIGIL_EVENTS", "$JS.API.STREAM.MSG.GET.VIGIL_EVENTS", []busauth.Principal{W, A, C, D}},
		{"a message of VIGIL_RAW", "$JS.API.STREAM.MSG.GET.VIGIL_RAW", []busauth.Principal{D}},
		{"a secret", "$JS.API.DIRECT.GET.KV_vigil-keyguard-secrets.$KV.vigil-keyguard-secrets.k", []busauth.Principal{K, D}},
		{"a secret from the leader", "$JS.API.STREAM.MSG.GET.KV_vigil-keyguard-secrets", []busauth.Principal{K, D}},
		{"a nonce", "$JS.API.DIRECT.GET.KV_vigil-keyguard-nonces.$KV.vigil-keyguard-nonces.k", []busauth.Principal{K, D}},
		{"a status", "$JS.API.DIRECT.GET.KV_vigil-status.$KV.vigil-status.k", []busauth.Principal{W, K, C, D}},
		{"list streams", "$JS.API.STREAM.NAMES", []busauth.Principal{D}},
	}
	writers := map[string][]busauth.Principal{
		events.BucketVMs:                {I},
		events.BucketStatus:             {W},
		events.BucketGrants:             {K},
		events.BucketCollateral:         {W, K},
		events.BucketKeyguardNonces:     {K},
		events.BucketKeyguardSecrets:    {K, D},
		events.BucketAgents:             {K},
		events.BucketAlertSubscriptions: {D},
		events.BucketAlertState:         {N},
		events.BucketAlertSilences:      {D},
	}
	for _, b := range events.Buckets(events.Topology{}) {
		p = append(p, probe{"write " + b.Bucket, "$KV." + b.Bucket + ".k", writers[b.Bucket]})
	}
	return p
}

// subscribeProbes cover the inboxes, the request subjects and the
// streams' and JetStream's subjects.
func subscribeProbes() []probe {
	return []probe{
		{"every inbox", "_INBOX.>", nil},
		{"everything", ">", nil},
		{"ingest's inbox", busauth.InboxPrefix(I) + ".>", []busauth.Principal{I}},
		{"attest-worker's inbox", busauth.InboxPrefix(W) + ".>", []busauth.Principal{W}},
		{"keyguard's inbox", busauth.InboxPrefix(K) + ".>", []busauth.Principal{K}},
		{"the auditor's inbox", busauth.InboxPrefix(A) + ".>", []busauth.Principal{A}},
		{"the notifier's inbox", busauth.InboxPrefix(N) + ".>", []busauth.Principal{N}},
		{"the console's inbox", busauth.InboxPrefix(C) + ".>", []busauth.Principal{C}},
		{"the admin's inbox", busauth.AdminInboxPrefix(busauth.DefaultAdminName) + ".>", []busauth.Principal{D}},
		{"another admin's inbox", busauth.AdminInboxPrefix("mallory") + ".>", nil},
		{"every admin's inbox", "_INBOX_admin.>", nil},
		{"its own agent inbox", busauth.AgentInboxPrefix(vmA) + ".>", []busauth.Principal{G}},
		{"another VM's agent inbox", busauth.AgentInboxPrefix(vmB) + ".>", nil},
		{"every agent's inbox", "_INBOX_agent.>", nil},
		{"every agent's inbox by token", "_INBOX_agent.*.>", nil},
		{"its own challenge", events.ChallengeSubject(vmA), []busauth.Principal{G}},
		{"another VM's challenge", events.ChallengeSubject(vmB), nil},
		{"every challenge", "vigil.agent.*.challenge", nil},
		{"unpinned nonce requests (earlier releases)", "vigil.keyguard.nonce", nil},
		{"unpinned release requests (earlier releases)", "vigil.keyguard.release", nil},
		{"nonce requests by VM", events.SubjectKeyguardNonceAll, []busauth.Principal{K}},
		{"release requests by VM", events.SubjectKeyguardReleaseAll, []busauth.Principal{K}},
		{"keyguard's operator API", "vigil.keyguard.admin.>", []busauth.Principal{K}},
		{"events", events.SubjectEventsAll, nil},
		{"alerts", events.SubjectAlertsAll, nil},
		{"jobs", events.SubjectJobsAll, nil},
		{"schedules", events.SubjectScheduleAll, nil},
		{"acknowledgements", "$JS.ACK.>", nil},
		{"JetStream API requests", "$JS.API.>", nil},
		{"flow control", "$JS.FC.>", nil},
		{"bucket writes", "$KV.>", nil},
		{"system account", "$SYS.>", nil},
	}
}

// TestPermissionMatrix: for every principal (the agent as vmA's) every
// publish and subscription of the probes is refused by the server unless
// the principal needs it, and what it needs is accepted.
func TestPermissionMatrix(t *testing.T) {
	e := newEnv(t)
	for _, p := range append(slices.Clone(services), G) {
		t.Run(string(p), func(t *testing.T) {
			e := e.with(t)
			var c *client
			if p == G {
				c = e.agent(vmA)
			} else {
				c = e.as(p)
			}
			for _, pr := range publishProbes() {
				err := c.publish(pr.subject)
				switch may := slices.Contains(pr.may, p); {
				case may && err != nil:
					t.Errorf("publish %s (%s): refused: %v", pr.what, pr.subject, err)
				case !may && err == nil:
					t.Errorf("publish %s (%s): accepted", pr.what, pr.subject)
				}
			}
			for _, pr := range subscribeProbes() {
				sub, err := c.subscribe(pr.subject)
				switch may := slices.Contains(pr.may, p); {
				case may && err != nil:
					t.Errorf("subscribe %s (%s): refused: %v", pr.what, pr.subject, err)
				case !may && err == nil:
					t.Errorf("subscribe %s (%s): accepted", pr.what, pr.subject)
				}
				if sub != nil {
					_ = sub.Unsubscribe()
				}
			}
		})
	}
}
