package busauth

import (
	"slices"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Access is what a principal may do on the bus, as the server enforces it.
// For agents and administrators, {{name()}} stands for the user's name (its
// VM key, its admin name), which the server puts in at connect time.
type Access struct {
	Publish   Subjects
	Subscribe Subjects
	// Responses lets the principal publish one reply to the reply subject
	// of each message it receives, within ResponseTTL (the server's
	// allow_responses), besides Publish.
	Responses bool
	// InboxPrefix is the principal's inbox prefix (nats.CustomInboxPrefix).
	InboxPrefix string
}

// Subjects are allow and deny lists of NATS subjects; deny wins.
type Subjects struct {
	Allow, Deny []string
}

// ResponseTTL bounds how long after receiving a request an agent may
// answer it (the attest-worker waits 10 s by default).
const ResponseTTL = time.Minute

// Consumer is a durable consumer a principal owns: it alone may create,
// pull from, acknowledge, look up and delete it.
type Consumer struct {
	Principal Principal
	Stream    string
	Durable   string
	// Filters are the filter subjects; with one, the principal may create
	// the consumer with that filter only.
	Filters []string
}

// Durable consumer names (docs/design.md §17): the services' defaults.
const (
	ConsumerIngest          = "vigil-ingest-normalize"
	ConsumerAttestJobs      = "attest-worker"
	ConsumerAttestSchedule  = "attest-worker-schedule"
	ConsumerAttestLifecycle = "attest-worker-lifecycle"
	ConsumerKeyguard        = "keyguard"
	ConsumerAuditor         = "vigil-auditor"
	// ConsumerNotifier is the prefix of the notifier's durables on
	// VIGIL_ALERTS, one per subscription ("vigil-notifier-<id>"), whose
	// names the permissions cannot list: the notifier may use any
	// durable of VIGIL_ALERTS, where no other principal has one.
	ConsumerNotifier = "vigil-notifier"
	// ConsumerNotifierReplay delivers the replays and tests an
	// administrator asks for (vigil alerts dlq replay, vigil alerts test).
	ConsumerNotifierReplay = "vigil-notifier-replay"
)

// Consumers returns every durable consumer of docs/design.md §17 with its
// owner, and the notifier's.
func Consumers() []Consumer {
	return []Consumer{
		{Ingest, events.StreamRaw, ConsumerIngest, []string{events.SubjectRawAll}},
		{AttestWorker, events.StreamJobs, ConsumerAttestJobs, []string{events.SubjectAttestJobsAll}},
		{AttestWorker, events.StreamSchedule, ConsumerAttestSchedule, []string{events.SubjectScheduleDue}},
		{AttestWorker, events.StreamEvents, ConsumerAttestLifecycle, []string{events.VMEventSubject("*", events.KindLifecycle)}},
		{Keyguard, events.StreamEvents, ConsumerKeyguard, []string{
			events.VMEventSubject("*", events.KindVerdict),
			events.VMEventSubject("*", events.KindState),
			events.VMEventSubject("*", events.KindLifecycle),
		}},
		{Auditor, events.StreamEvents, ConsumerAuditor, nil},
		{Notifier, events.StreamAlertsDLQ, ConsumerNotifierReplay, []string{events.SubjectAlertsReplayAll}},
	}
}

// Subjects published or served that pkg/events does not name.
const (
	subjectAlert          = "vigil.alert.*.*" // events.AlertSubject
	subjectFleetAlerts    = "vigil.alert.*.fleet"
	subjectFleetCritical  = "vigil.alert.critical.fleet"
	subjectChallengeAll   = "vigil.agent.*.challenge"
	subjectScheduleVMs    = "vigil.schedule.vm.*"
	subjectRawSources     = "vigil.ingest.raw.*"
	subjectPolicyAll      = "vigil.events.policy.>"
	subjectKeyguardAdmins = subjectKeyguardAdmin + ".>"
)

// Permissions returns what p may do. It is the template of p's scoped
// signing key, so every user of p gets exactly this.
func Permissions(p Principal) Access { return build(p).done() }

// Streams returns the streams and buckets (by bucket name) p may look up
// ($JS.API.STREAM.INFO): those it uses, which a service checks at start
// (events.CheckTopology). It is nil for a principal without JetStream.
func Streams(p Principal) []string {
	f := build(p).f
	var out []string
	for _, s := range slices.Concat(f.info, f.provision, f.kvRead, f.kvWrite) {
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

func build(p Principal) *builder {
	if !p.valid() {
		return &builder{}
	}
	b := newBuilder(p)
	switch p {
	case Ingest:
		b.jetstream()
		b.pub(subjectRawSources,
			events.VMEventSubject("*", events.KindLifecycle),
			events.VMEventSubject("*", events.KindConfig),
			events.SubjectAttestJobsAll,
			subjectAlert)
		b.streamInfo(events.StreamRaw, events.StreamEvents, events.StreamJobs, events.StreamAlerts)
		b.kvWrite(events.BucketVMs)
		b.watch(events.BucketVMs)

	case AttestWorker:
		b.jetstream()
		b.pub(events.VMEventSubject("*", events.KindVerdict),
			events.VMEventSubject("*", events.KindState),
			subjectAlert,
			events.SubjectAttestJobsAll,
			subjectScheduleVMs,
			events.SubjectSweepSchedule,
			subjectChallengeAll)
		b.streamInfo(events.StreamEvents, events.StreamJobs, events.StreamSchedule, events.StreamAlerts)
		// Verdicts read back by sequence, the pending job and schedule of
		// a VM, the sweep schedule.
		b.msgGet(events.StreamEvents, events.StreamJobs, events.StreamSchedule)
		// Cancelling a VM's schedule purges its subject (docs/design.md §3).
		b.jsAPI(api("STREAM.PURGE", events.StreamSchedule))
		// The policy follower.
		b.ordered(events.StreamEvents, subjectPolicyAll)
		b.kvWrite(events.BucketStatus, events.BucketCollateral)
		b.kvRead(events.BucketVMs)
		b.watch(events.BucketStatus, events.BucketVMs)

	case Keyguard:
		b.jetstream()
		b.pub(events.VMEventSubject("*", events.KindKey), subjectAlert)
		b.sub(events.SubjectKeyguardNonceAll, events.SubjectKeyguardReleaseAll,
			subjectKeyguardAdmins)
		// Answers to agents and administrators, and nowhere else.
		b.pub(agentInboxPrefix+".*.>", adminInboxPrefix+".*.>")
		b.streamInfo(events.StreamEvents, events.StreamAlerts)
		// The release policy's follower (pkg/policyfeed).
		b.ordered(events.StreamEvents, subjectPolicyAll)
		b.kvWrite(events.BucketGrants, events.BucketKeyguardNonces, events.BucketKeyguardSecrets, events.BucketCollateral, events.BucketAgents)
		b.kvRead(events.BucketStatus, events.BucketVMs)
		// Listing secrets, and the agents' revoked credentials.
		b.watch(events.BucketKeyguardSecrets, events.BucketAgents)

	case Auditor:
		b.jetstream()
		b.pub(events.SubjectCheckpoint, subjectFleetCritical)
		b.streamInfo(events.StreamEvents, events.StreamCheckpoints, events.StreamAlerts)
		// Gaps are found by reading messages by sequence.
		b.msgGet(events.StreamEvents)

	case Notifier:
		b.jetstream()
		// Its own fleet alerts (an unhealthy subscription) and dead letters.
		b.pub(subjectFleetAlerts, events.SubjectAlertsDeadAll)
		b.streamInfo(events.StreamAlerts, events.StreamAlertsDLQ)
		// One durable per subscription on VIGIL_ALERTS, named after it:
		// any consumer name there (no other principal has a durable on
		// VIGIL_ALERTS; the console's and administrators' read it with
		// ordered consumers), and their acknowledgements.
		b.ordered(events.StreamAlerts, "")
		b.jsAPI("$JS.ACK." + events.StreamAlerts + ".>")
		b.kvWrite(events.BucketAlertState)
		b.kvRead(events.BucketAlertSubscriptions, events.BucketAlertSilences, events.BucketVMs)
		b.watch(events.BucketAlertSubscriptions, events.BucketAlertSilences, events.BucketAlertState)

	case Console:
		b.jetstream()
		for _, s := range []string{events.StreamEvents, events.StreamAlerts, events.StreamCheckpoints} {
			b.streamInfo(s)
			b.msgGet(s)
			b.ordered(s, "")
		}
		b.kvRead(events.BucketStatus, events.BucketVMs, events.BucketGrants)
		b.watch(events.BucketStatus, events.BucketVMs, events.BucketGrants)

	case Admin:
		b.jetstream()
		b.jsAPI(api("STREAM.NAMES"), api("STREAM.LIST"))
		// Provisioning: the Vigil streams and buckets by name, nothing
		// else; never delete or purge.
		b.provision(streamNames()...)
		b.streamInfo(streamNames()...)
		b.msgGet(streamNames()...)
		for _, s := range streamNames() {
			b.ordered(s, "")
		}
		b.kvRead(bucketNames()...)
		b.watch(events.BucketGrants, events.BucketKeyguardSecrets)
		// vigil keyguard secret put / delete; vigil alerts subscribe,
		// delete, pause, resume, silence.
		b.kvWrite(events.BucketKeyguardSecrets, events.BucketAlertSubscriptions, events.BucketAlertSilences)
		b.watch(events.BucketAlertSubscriptions, events.BucketAlertSilences, events.BucketAlertState)
		// vigil alerts dlq replay and test.
		b.pub(events.SubjectAlertsReplayAll)
		// Attributed actions.
		b.pub("vigil.events.policy.*."+nameTemplate, subjectKeyguardAdmin+".*."+nameTemplate,
			"vigil.events.silence."+nameTemplate)

	case Agent:
		// Its own VM's key release subjects only.
		b.pub(events.KeyguardNonceSubject(nameTemplate), events.KeyguardReleaseSubject(nameTemplate))
		b.sub(events.ChallengeSubject(nameTemplate))
		b.a.Responses = true
	default:
		return b
	}
	for _, c := range Consumers() {
		if c.Principal == p {
			b.durable(c)
		}
	}
	b.sub(b.a.InboxPrefix + ".>")
	return b
}

// builder collects a principal's permissions, and what they are for
// (facts, for PermissionsMarkdown).
type builder struct {
	p Principal
	a Access
	f facts
}

// facts are a principal's permissions by purpose.
type facts struct {
	publish, subscribe      []string // bus subjects
	durables                []Consumer
	ordered                 []string // streams, with the filter in parentheses
	info, msgGet, provision []string // streams
	kvRead, kvWrite, watch  []string // buckets
	api                     []string // other JetStream API subjects
	denied                  []string // other principals' durables, stream/name
}

func newBuilder(p Principal) *builder {
	prefix := InboxPrefix(p)
	if p == Admin {
		prefix = AdminInboxPrefix(nameTemplate)
	}
	return &builder{p: p, a: Access{InboxPrefix: prefix}}
}

func (b *builder) allow(s ...string)   { b.a.Publish.Allow = append(b.a.Publish.Allow, s...) }
func (b *builder) denyPub(s ...string) { b.a.Publish.Deny = append(b.a.Publish.Deny, s...) }

// pub allows publishing on bus subjects.
func (b *builder) pub(s ...string) {
	b.allow(s...)
	b.f.publish = append(b.f.publish, s...)
}

// sub allows subscribing to bus subjects.
func (b *builder) sub(s ...string) {
	b.a.Subscribe.Allow = append(b.a.Subscribe.Allow, s...)
	b.f.subscribe = append(b.f.subscribe, s...)
}

// jsAPI allows JetStream API subjects no other method covers.
func (b *builder) jsAPI(s ...string) {
	b.allow(s...)
	b.f.api = append(b.f.api, s...)
}

// api is a JetStream API subject: $JS.API.<verb>[.<arg>...].
func api(verb string, args ...string) string {
	s := "$JS.API." + verb
	for _, a := range args {
		s += "." + a
	}
	return s
}

// jetstream is what every JetStream client needs: the account info (the
// services' readiness check).
func (b *builder) jetstream() { b.allow(api("INFO")) }

func (b *builder) streamInfo(streams ...string) {
	for _, s := range streams {
		b.allow(api("STREAM.INFO", s))
	}
	b.f.info = append(b.f.info, streams...)
}

// provision lets the principal create and update streams.
func (b *builder) provision(streams ...string) {
	for _, s := range streams {
		b.allow(api("STREAM.CREATE", s), api("STREAM.UPDATE", s))
	}
	b.f.provision = append(b.f.provision, streams...)
}

// msgGet lets the principal read a stream's messages by sequence or last
// by subject, through the stream leader.
func (b *builder) msgGet(streams ...string) {
	for _, s := range streams {
		b.allow(api("STREAM.MSG.GET", s))
	}
	b.f.msgGet = append(b.f.msgGet, streams...)
}

// durable gives the owner of c what a pull consumer runner needs.
func (b *builder) durable(c Consumer) {
	if len(c.Filters) == 1 {
		b.allow(api("CONSUMER.CREATE", c.Stream, c.Durable, c.Filters[0]))
	} else {
		b.allow(api("CONSUMER.CREATE", c.Stream, c.Durable))
	}
	b.f.durables = append(b.f.durables, c)
	b.allow(api("CONSUMER.INFO", c.Stream, c.Durable),
		api("CONSUMER.DELETE", c.Stream, c.Durable),
		api("CONSUMER.MSG.NEXT", c.Stream, c.Durable),
		"$JS.ACK."+c.Stream+"."+c.Durable+".>")
}

// ordered lets the principal read stream through consumers it names
// itself (ordered consumers, with filter when given), and denies it the
// other principals' durables on that stream.
func (b *builder) ordered(stream, filter string) {
	if filter != "" {
		b.allow(api("CONSUMER.CREATE", stream, "*", filter))
		b.f.ordered = append(b.f.ordered, stream+" ("+filter+")")
	} else {
		b.allow(api("CONSUMER.CREATE", stream, "*"), api("CONSUMER.CREATE", stream, "*", ">"))
		b.f.ordered = append(b.f.ordered, stream)
	}
	b.allow(api("CONSUMER.INFO", stream, "*"),
		api("CONSUMER.DELETE", stream, "*"),
		api("CONSUMER.MSG.NEXT", stream, "*"))
	for _, c := range Consumers() {
		if c.Stream != stream || c.Principal == b.p {
			continue
		}
		b.denyPub(api("CONSUMER.CREATE", stream, c.Durable),
			api("CONSUMER.CREATE", stream, c.Durable, ">"),
			api("CONSUMER.DELETE", stream, c.Durable),
			api("CONSUMER.MSG.NEXT", stream, c.Durable))
		b.f.denied = append(b.f.denied, stream+"/"+c.Durable)
	}
}

// kvRead lets the principal open buckets and read their keys, directly or
// from the stream leader.
func (b *builder) kvRead(buckets ...string) {
	for _, k := range buckets {
		s := kvStream(k)
		b.allow(api("STREAM.INFO", s), api("STREAM.MSG.GET", s), api("DIRECT.GET", s), api("DIRECT.GET", s, ">"))
	}
	b.f.kvRead = append(b.f.kvRead, buckets...)
}

// kvWrite is kvRead and writes (put, create, update, delete, purge).
func (b *builder) kvWrite(buckets ...string) {
	for _, k := range buckets {
		s := kvStream(k)
		b.allow(api("STREAM.INFO", s), api("STREAM.MSG.GET", s), api("DIRECT.GET", s), api("DIRECT.GET", s, ">"))
		b.allow("$KV." + k + ".>")
	}
	b.f.kvWrite = append(b.f.kvWrite, buckets...)
}

// watch lets the principal watch buckets and list their keys: an ordered
// push consumer delivering to its inbox, with flow control. No bucket has
// a durable consumer.
func (b *builder) watch(buckets ...string) {
	for _, k := range buckets {
		s := kvStream(k)
		b.allow(api("CONSUMER.CREATE", s), api("CONSUMER.CREATE", s, "*"), api("CONSUMER.CREATE", s, "*", ">"),
			api("CONSUMER.DELETE", s, "*"), "$JS.FC."+s+".>")
	}
	b.f.watch = append(b.f.watch, buckets...)
}

func (b *builder) done() Access {
	uniq := func(s []string) []string {
		var out []string
		for _, v := range s {
			if !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
		return out
	}
	b.a.Publish.Allow = uniq(b.a.Publish.Allow)
	b.a.Publish.Deny = uniq(b.a.Publish.Deny)
	b.a.Subscribe.Allow = uniq(b.a.Subscribe.Allow)
	b.a.Subscribe.Deny = uniq(b.a.Subscribe.Deny)
	return b.a
}

func kvStream(bucket string) string { return "KV_" + bucket }

func streamNames() []string {
	var out []string
	for _, s := range events.Streams(events.Topology{}) {
		out = append(out, s.Name)
	}
	for _, k := range bucketNames() {
		out = append(out, kvStream(k))
	}
	return out
}

func bucketNames() []string {
	var out []string
	for _, k := range events.Buckets(events.Topology{}) {
		out = append(out, k.Bucket)
	}
	return out
}
