package busauth_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// TestEachPrincipalCanDoItsWork: every principal does, with its own
// credentials against the generated account, what its service does on the
// bus (docs/design.md §2–§4, §17): its durable consumers created, consumed
// and acknowledged as bus.Consume does, its publications stored, its
// buckets read, written and watched, its requests served and answered.
// Nothing it does is refused.
func TestEachPrincipalCanDoItsWork(t *testing.T) {
	for _, tc := range []struct {
		p   busauth.Principal
		run func(t *testing.T, e *env, c *client)
	}{
		{I, ingestWork},
		{W, attestWorkerWork},
		{K, keyguardWork},
		{A, auditorWork},
		{N, notifierWork},
		{C, consoleWork},
		{D, adminWork},
		{G, agentWork},
	} {
		t.Run(string(tc.p), func(t *testing.T) {
			e := newEnv(t)
			var c *client
			if tc.p == G {
				c = e.agent(vmA)
			} else {
				c = e.as(tc.p)
			}
			if tc.p != G {
				if _, err := c.js.AccountInfo(ctxT(t)); err != nil {
					t.Fatalf("account info (readiness): %v", err)
				}
				// The topology check a service runs at start.
				if err := events.CheckTopology(ctxT(t), c.js, events.Topology{}, busauth.Streams(tc.p)...); err != nil {
					t.Fatalf("topology check on %v: %v", busauth.Streams(tc.p), err)
				}
			} else if s := busauth.Streams(tc.p); s != nil {
				t.Fatalf("Streams(agent) = %v, want none", s)
			}
			tc.run(t, e, c)
			c.noErrors()
		})
	}
}

// consumeOne creates the durable as its owner does, fetches the next
// message and acknowledges it, waiting for the server's confirmation.
func consumeOne(t *testing.T, c *client, stream string, cfg jetstream.ConsumerConfig) jetstream.Msg {
	t.Helper()
	ctx := ctxT(t)
	cfg.AckPolicy = jetstream.AckExplicitPolicy
	cons, err := c.js.CreateOrUpdateConsumer(ctx, stream, cfg)
	if err != nil {
		t.Fatalf("%s: create consumer %s on %s: %v", c.creds.Name, cfg.Durable, stream, err)
	}
	if _, err := c.js.Consumer(ctx, stream, cfg.Durable); err != nil {
		t.Fatalf("%s: look up consumer %s: %v", c.creds.Name, cfg.Durable, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(1), jetstream.PullHeartbeat(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	m, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("%s: next message of %s: %v", c.creds.Name, cfg.Durable, err)
	}
	if err := m.InProgress(); err != nil {
		t.Fatal(err)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatalf("%s: acknowledge on %s: %v", c.creds.Name, cfg.Durable, err)
	}
	return m
}

// kvUse writes (when write), reads back and watches key in bucket.
func kvUse(t *testing.T, c *client, bucket, key string, write, watch bool) {
	t.Helper()
	ctx := ctxT(t)
	kv, err := c.js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("%s: open %s: %v", c.creds.Name, bucket, err)
	}
	if write {
		rev, err := kv.Create(ctx, key, []byte("1"))
		if err != nil {
			t.Fatalf("%s: create %s/%s: %v", c.creds.Name, bucket, key, err)
		}
		if _, err := kv.Update(ctx, key, []byte("2"), rev); err != nil {
			t.Fatalf("%s: update %s/%s: %v", c.creds.Name, bucket, key, err)
		}
	}
	if _, err := kv.Get(ctx, key); err != nil && !(errors.Is(err, jetstream.ErrKeyNotFound) && !write) {
		t.Fatalf("%s: get %s/%s: %v", c.creds.Name, bucket, key, err)
	}
	if _, err := kv.Status(ctx); err != nil {
		t.Fatalf("%s: status of %s: %v", c.creds.Name, bucket, err)
	}
	if watch {
		w, err := kv.WatchAll(ctx)
		if err != nil {
			t.Fatalf("%s: watch %s: %v", c.creds.Name, bucket, err)
		}
		for e := range w.Updates() {
			if e == nil { // initial values done
				break
			}
		}
		if err := w.Stop(); err != nil {
			t.Fatal(err)
		}
		keys, err := kv.ListKeys(ctx)
		if err != nil {
			t.Fatalf("%s: list %s: %v", c.creds.Name, bucket, err)
		}
		for range keys.Keys() {
		}
	}
}

// lastFromLeader reads key's last entry from the bucket stream's leader,
// as keyguard's kvlast does ($JS.API.STREAM.MSG.GET).
func lastFromLeader(t *testing.T, c *client, bucket, key string) {
	t.Helper()
	req, _ := json.Marshal(map[string]string{"last_by_subj": "$KV." + bucket + "." + key})
	m, err := c.nc.Request("$JS.API.STREAM.MSG.GET.KV_"+bucket, req, 5*time.Second)
	if err != nil {
		t.Fatalf("%s: read %s/%s from the leader: %v", c.creds.Name, bucket, key, err)
	}
	if !strings.Contains(string(m.Data), `"message"`) && !strings.Contains(string(m.Data), "no message found") {
		t.Fatalf("%s: read %s/%s from the leader: %s", c.creds.Name, bucket, key, m.Data)
	}
}

func ingestWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	if _, err := c.js.Stream(ctx, events.StreamRaw); err != nil {
		t.Fatal(err)
	}
	c.publishEvent(ctx, events.RawSubject("eventgrid"), events.TypeRaw, map[string]string{"id": "1"})
	consumeOne(t, c, events.StreamRaw, jetstream.ConsumerConfig{Durable: busauth.ConsumerIngest, FilterSubject: events.SubjectRawAll})
	c.publishEvent(ctx, events.LifecycleSubject(vmB), events.TypeLifecycle, map[string]string{})
	c.publishEvent(ctx, events.ConfigSubject(vmB), events.TypeConfig, map[string]string{})
	c.publishEvent(ctx, events.AttestJobSubject(vmB), events.TypeJob, events.Job{VMKey: vmB})
	c.publishEvent(ctx, events.AlertSubject(events.SeverityHigh, vmB), events.TypeAlert, events.Alert{})
	kvUse(t, c, events.BucketVMs, vmB, true, true)
}

func attestWorkerWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	in := e.as(I)
	// Jobs, from ingest and its own.
	in.publishEvent(ctx, events.AttestJobSubject(vmB), events.TypeJob, events.Job{VMKey: vmB})
	consumeOne(t, c, events.StreamJobs, jetstream.ConsumerConfig{Durable: busauth.ConsumerAttestJobs, FilterSubject: events.SubjectAttestJobsAll})
	c.publishEvent(ctx, events.AttestJobSubject(vmB), events.TypeJob, events.Job{VMKey: vmB})
	jobs, err := c.js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jobs.GetLastMsgForSubject(ctx, events.AttestJobSubject(vmB)); err != nil {
		t.Fatalf("pending job: %v", err)
	}
	// A schedule that fires at once, its fired copy consumed, a pending
	// one read and cancelled, the sweep.
	sched, err := c.js.Stream(ctx, events.StreamSchedule)
	if err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(events.ScheduleSubject(vmB))
	m.Data = []byte("{}")
	m.Header.Set("Nats-Schedule", "@at "+time.Now().Add(-time.Second).UTC().Format(time.RFC3339Nano))
	m.Header.Set("Nats-Schedule-Target", events.ScheduleDueSubject(vmB))
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("schedule: %v", err)
	}
	consumeOne(t, c, events.StreamSchedule, jetstream.ConsumerConfig{Durable: busauth.ConsumerAttestSchedule, FilterSubject: events.SubjectScheduleDue})
	m = nats.NewMsg(events.ScheduleSubject(vmA))
	m.Data = []byte("{}")
	m.Header.Set("Nats-Schedule", "@at "+time.Now().Add(time.Hour).UTC().Format(time.RFC3339Nano))
	m.Header.Set("Nats-Schedule-Target", events.ScheduleDueSubject(vmA))
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("schedule: %v", err)
	}
	if _, err := sched.GetLastMsgForSubject(ctx, events.ScheduleSubject(vmA)); err != nil {
		t.Fatalf("pending schedule: %v", err)
	}
	if err := sched.Purge(ctx, jetstream.WithPurgeSubject(events.ScheduleSubject(vmA))); err != nil {
		t.Fatalf("cancel schedule: %v", err)
	}
	m = nats.NewMsg(events.SubjectSweepSchedule)
	m.Data = []byte("{}")
	m.Header.Set("Nats-Schedule", "@every 1h")
	m.Header.Set("Nats-Schedule-Target", events.SubjectSweepDue)
	if _, err := c.js.PublishMsg(ctx, m); err != nil {
		t.Fatalf("sweep schedule: %v", err)
	}
	// Lifecycle events from ingest; verdicts and status changes read
	// back by sequence; alerts.
	in.publishEvent(ctx, events.LifecycleSubject(vmB), events.TypeLifecycle, map[string]string{})
	consumeOne(t, c, events.StreamEvents, jetstream.ConsumerConfig{Durable: busauth.ConsumerAttestLifecycle, FilterSubject: events.VMEventSubject("*", events.KindLifecycle)})
	ack := c.publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]string{})
	evs, err := c.js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evs.GetMsg(ctx, ack.Sequence); err != nil {
		t.Fatalf("verdict read back: %v", err)
	}
	c.publishEvent(ctx, events.StateSubject(vmB), events.TypeState, map[string]string{})
	c.publishEvent(ctx, events.AlertSubject(events.SeverityHigh, vmB), events.TypeAlert, events.Alert{})
	// The policy follower reads what an administrator published.
	e.admin.publishEvent(ctx, busauth.AdminPolicySubject("default", busauth.DefaultAdminName), events.TypePolicy, map[string]string{})
	followPolicy(t, c, "default")
	// Buckets.
	kvUse(t, c, events.BucketStatus, vmB, true, true)
	kvUse(t, c, events.BucketVMs, vmB, false, true)
	kvUse(t, c, events.BucketCollateral, "vcek", true, false)
	// A challenge, answered by the VM's agent.
	ag := e.agent(vmB)
	ag.serve(events.ChallengeSubject(vmB), "", func(*nats.Msg) []byte { return []byte("bundle") })
	if got, err := c.request(events.ChallengeSubject(vmB), []byte("challenge")); err != nil || string(got) != "bundle" {
		t.Fatalf("challenge: %q, %v", got, err)
	}
}

// followPolicy reads the last version of policy id through an ordered
// consumer, as pkg/policyfeed does.
func followPolicy(t *testing.T, c *client, id string) {
	t.Helper()
	ctx := ctxT(t)
	cons, err := c.js.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.PolicyVersionsFilter(id)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		t.Fatalf("%s: follow policy %s: %v", c.creds.Name, id, err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	m, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("%s: policy %s: %v", c.creds.Name, id, err)
	}
	if want := busauth.AdminPolicySubject(id, busauth.DefaultAdminName); m.Subject() != want {
		t.Fatalf("policy on %s, want %s", m.Subject(), want)
	}
}

func keyguardWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	// Its consumer, as keyguard makes it, on a verdict.
	e.as(W).publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]string{})
	consumeOne(t, c, events.StreamEvents, jetstream.ConsumerConfig{Durable: busauth.ConsumerKeyguard, DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubjects: []string{events.VMEventSubject("*", events.KindVerdict), events.VMEventSubject("*", events.KindState), events.VMEventSubject("*", events.KindLifecycle)}})
	c.publishEvent(ctx, events.KeySubject(vmB), events.TypeKey, map[string]string{})
	c.publishEvent(ctx, events.AlertSubject(events.SeverityCritical, vmB), events.TypeAlert, events.Alert{})
	e.admin.publishEvent(ctx, busauth.AdminPolicySubject("release", busauth.DefaultAdminName), events.TypePolicy, map[string]string{})
	followPolicy(t, c, "release")
	// Grants: compare-and-set writes, reads from the leader, listing by
	// the stream's subjects, deletion.
	kvUse(t, c, events.BucketGrants, vmB+".local.k1", true, false)
	lastFromLeader(t, c, events.BucketGrants, vmB+".local.k1")
	grants, err := c.js.Stream(ctx, "KV_"+events.BucketGrants)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := grants.Info(ctx, jetstream.WithSubjectFilter("$KV."+events.BucketGrants+"."+vmB+".>")); err != nil {
		t.Fatalf("list grants: %v", err)
	}
	gkv, _ := c.js.KeyValue(ctx, events.BucketGrants)
	if err := gkv.Delete(ctx, vmB+".local.k1"); err != nil {
		t.Fatal(err)
	}
	// Nonces: stored with their own TTL, used up with a revision check.
	nkv, err := c.js.KeyValue(ctx, events.BucketKeyguardNonces)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := nkv.Create(ctx, vmB+".00ff", []byte("{}"), jetstream.KeyTTL(2*time.Minute))
	if err != nil {
		t.Fatalf("store nonce: %v", err)
	}
	lastFromLeader(t, c, events.BucketKeyguardNonces, vmB+".00ff")
	if err := nkv.Purge(ctx, vmB+".00ff", jetstream.LastRevision(rev), jetstream.PurgeTTL(time.Second)); err != nil {
		t.Fatalf("use nonce: %v", err)
	}
	// Secrets (imports), listed; the status and inventory read; the
	// collateral cache.
	kvUse(t, c, events.BucketKeyguardSecrets, "k1", true, true)
	// Enrolled and revoked agent credentials, listed for the account's
	// revocation list.
	kvUse(t, c, events.BucketAgents, "rev."+vmB, true, true)
	lastFromLeader(t, c, events.BucketAgents, "rev."+vmB)
	akv, _ := c.js.KeyValue(ctx, events.BucketAgents)
	revoked, err := akv.ListKeysFiltered(ctx, "rev.*")
	if err != nil {
		t.Fatalf("list revoked agents: %v", err)
	}
	var keys []string
	for k := range revoked.Keys() {
		keys = append(keys, k)
	}
	if len(keys) != 1 {
		t.Fatalf("revoked agents listed: %v", keys)
	}
	lastFromLeader(t, c, events.BucketStatus, vmB)
	lastFromLeader(t, c, events.BucketVMs, vmB)
	kvUse(t, c, events.BucketStatus, vmB, false, false)
	kvUse(t, c, events.BucketCollateral, "vcek", true, false)
	// Requests from an agent and an administrator, answered.
	pinned := c.serve(events.SubjectKeyguardNonceAll, "keyguard", func(m *nats.Msg) []byte {
		return []byte("nonce for " + m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	})
	admin := c.serve("vigil.keyguard.admin.>", "keyguard", func(m *nats.Msg) []byte {
		return []byte("revoked by " + m.Subject[strings.LastIndexByte(m.Subject, '.')+1:])
	})
	ag := e.agent(vmA)
	for _, tc := range []struct {
		who     *client
		subject string
		want    string
		answers <-chan error
	}{
		{ag, events.KeyguardNonceSubject(vmA), "nonce for " + vmA, pinned},
		{e.admin, busauth.AdminRequestSubject("revoke", busauth.DefaultAdminName), "revoked by " + busauth.DefaultAdminName, admin},
	} {
		got, err := tc.who.request(tc.subject, []byte("{}"))
		if err != nil || string(got) != tc.want {
			t.Fatalf("%s asks %s: %q, %v", tc.who.creds.Name, tc.subject, got, err)
		}
		if err := <-tc.answers; err != nil {
			t.Fatalf("keyguard's answer on %s: %v", tc.subject, err)
		}
	}
}

func auditorWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	w := e.as(W)
	for range 3 {
		w.publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]string{})
	}
	evs, err := c.js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evs.Info(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := evs.GetMsg(ctx, 2, jetstream.WithGetMsgSubject(">")); err != nil {
		t.Fatalf("message by sequence: %v", err)
	}
	// Its consumer, deleted and made again at the log's next sequence;
	// acknowledged all at once.
	if err := c.js.DeleteConsumer(ctx, events.StreamEvents, busauth.ConsumerAuditor); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Fatalf("delete consumer: %v", err)
	}
	cons, err := c.js.CreateConsumer(ctx, events.StreamEvents, jetstream.ConsumerConfig{Durable: busauth.ConsumerAuditor,
		AckPolicy: jetstream.AckAllPolicy, DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: 2})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	batch, err := cons.Fetch(2, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var last jetstream.Msg
	for m := range batch.Messages() {
		last = m
	}
	if last == nil {
		t.Fatalf("no messages: %v", batch.Error())
	}
	if err := last.DoubleAck(ctx); err != nil {
		t.Fatalf("acknowledge: %v", err)
	}
	if err := c.js.DeleteConsumer(ctx, events.StreamEvents, busauth.ConsumerAuditor); err != nil {
		t.Fatalf("delete consumer: %v", err)
	}
	// Checkpoints and their stream; the critical alert.
	cps, err := c.js.Stream(ctx, events.StreamCheckpoints)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.js.Publish(ctx, events.SubjectCheckpoint, []byte("checkpoint"), jetstream.WithMsgID("checkpoint-1")); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
	if _, err := cps.Info(ctx); err != nil {
		t.Fatal(err)
	}
	c.publishEvent(ctx, events.AlertSubject(events.SeverityCritical, ""), events.TypeAlert, events.Alert{})
}

func notifierWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	e.as(W).publishEvent(ctx, events.AlertSubject(events.SeverityHigh, vmB), events.TypeAlert, events.Alert{})
	if _, err := c.js.Stream(ctx, events.StreamAlerts); err != nil {
		t.Fatal(err)
	}
	// A subscription's durable (named after it), its state and health,
	// the subscriptions and silences it follows, a dead letter, its own
	// fleet alert, the replays.
	consumeOne(t, c, events.StreamAlerts, jetstream.ConsumerConfig{Durable: busauth.ConsumerNotifier + "-sub1"})
	kvUse(t, c, events.BucketAlertState, "health.sub1", true, true)
	kvUse(t, c, events.BucketAlertSubscriptions, "sub1", false, true)
	kvUse(t, c, events.BucketAlertSilences, "s1", false, true)
	kvUse(t, c, events.BucketVMs, vmB, false, false)
	c.publishEvent(ctx, events.AlertDLQSubject("sub1"), "io.vigil.alert.deadletter.v1", map[string]string{})
	c.publishEvent(ctx, events.AlertSubject(events.SeverityHigh, ""), events.TypeAlert, events.Alert{})
	e.as(D).publishEvent(ctx, events.AlertReplaySubject("sub1"), "io.vigil.alert.replay.v1", map[string]string{})
	consumeOne(t, c, events.StreamAlertsDLQ, jetstream.ConsumerConfig{Durable: busauth.ConsumerNotifierReplay, FilterSubject: events.SubjectAlertsReplayAll})
}

func consoleWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	e.as(W).publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]string{})
	e.as(W).publishEvent(ctx, events.AlertSubject(events.SeverityHigh, vmB), events.TypeAlert, events.Alert{})
	if _, err := e.as(A).js.Publish(ctx, events.SubjectCheckpoint, []byte("checkpoint")); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{events.StreamEvents, events.StreamAlerts, events.StreamCheckpoints} {
		readStream(t, c, s)
	}
	kvUse(t, c, events.BucketStatus, vmB, false, true)
	kvUse(t, c, events.BucketVMs, vmB, false, true)
	kvUse(t, c, events.BucketGrants, vmB+".local.k", false, true)
}

// readStream reads the first message of stream through an ordered
// consumer and by sequence, as `vigil events tail` and vigil dev's view do.
func readStream(t *testing.T, c *client, stream string) {
	t.Helper()
	ctx := ctxT(t)
	s, err := c.js.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("%s: %s: %v", c.creds.Name, stream, err)
	}
	if _, err := s.GetMsg(ctx, 1); err != nil {
		t.Fatalf("%s: %s message 1: %v", c.creds.Name, stream, err)
	}
	if s.CachedInfo().Config.Retention == jetstream.WorkQueuePolicy {
		return // read without consuming
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("%s: ordered consumer on %s: %v", c.creds.Name, stream, err)
	}
	it, err := cons.Messages()
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	if _, err := it.Next(jetstream.NextMaxWait(10 * time.Second)); err != nil {
		t.Fatalf("%s: %s: %v", c.creds.Name, stream, err)
	}
}

func adminWork(t *testing.T, e *env, c *client) {
	ctx := ctxT(t)
	// Provisioning again changes nothing and is allowed (newEnv did it
	// first).
	if err := events.Provision(ctx, c.js, events.Topology{}); err != nil {
		t.Fatalf("provision: %v", err)
	}
	names := c.js.StreamNames(ctx)
	n := 0
	for range names.Name() {
		n++
	}
	if want := len(events.Streams(events.Topology{})) + len(events.Buckets(events.Topology{})); names.Err() != nil || n != want {
		t.Fatalf("streams: %d, %v", n, names.Err())
	}
	// A policy version, read back as `vigil policy show` does.
	c.publishEvent(ctx, busauth.AdminPolicySubject("default", busauth.DefaultAdminName), events.TypePolicy, map[string]string{})
	evs, err := c.js.Stream(ctx, events.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evs.GetLastMsgForSubject(ctx, busauth.AdminPolicySubject("default", busauth.DefaultAdminName)); err != nil {
		t.Fatalf("policy show: %v", err)
	}
	// Every stream, as `vigil events tail` reads them.
	e.as(I).publishEvent(ctx, events.AttestJobSubject(vmB), events.TypeJob, events.Job{VMKey: vmB})
	readStream(t, c, events.StreamEvents)
	readStream(t, c, events.StreamJobs)
	// vigil alerts: subscriptions and silences written, health read, a
	// silence recorded (audited).
	kvUse(t, c, events.BucketAlertSubscriptions, "sub2", true, true)
	kvUse(t, c, events.BucketAlertSilences, "s2", true, true)
	kvUse(t, c, events.BucketAlertState, "health.sub2", false, true)
	c.publishEvent(ctx, events.SilenceSubject(busauth.DefaultAdminName), events.TypeSilence, events.Silence{})
	// Secrets stored, listed and deleted; grants read and listed.
	kvUse(t, c, events.BucketKeyguardSecrets, "k1", true, true)
	skv, _ := c.js.KeyValue(ctx, events.BucketKeyguardSecrets)
	if err := skv.Delete(ctx, "k1"); err != nil {
		t.Fatal(err)
	}
	kvUse(t, c, events.BucketGrants, vmB+".local.k", false, true)
	grants, err := c.js.Stream(ctx, "KV_"+events.BucketGrants)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := grants.Info(ctx, jetstream.WithSubjectFilter("$KV."+events.BucketGrants+".>")); err != nil {
		t.Fatal(err)
	}
	// keyguard's operator API, attributed.
	kg := e.as(K)
	answers := kg.serve("vigil.keyguard.admin.>", "keyguard", func(m *nats.Msg) []byte { return []byte(m.Subject) })
	subject := busauth.AdminRequestSubject("restore", busauth.DefaultAdminName)
	if got, err := c.request(subject, []byte("{}")); err != nil || string(got) != subject {
		t.Fatalf("restore: %q, %v", got, err)
	}
	if err := <-answers; err != nil {
		t.Fatal(err)
	}
}

func agentWork(t *testing.T, e *env, c *client) {
	// Its own challenge, answered.
	challenges := c.serve(events.ChallengeSubject(vmA), "", func(*nats.Msg) []byte { return []byte("bundle") })
	if got, err := e.as(W).request(events.ChallengeSubject(vmA), []byte("challenge")); err != nil || string(got) != "bundle" {
		t.Fatalf("challenge: %q, %v", got, err)
	}
	if err := <-challenges; err != nil {
		t.Fatalf("answer: %v", err)
	}
	// Key release, as the agent asks for it.
	kg := e.as(K)
	for _, s := range []string{events.KeyguardNonceSubject(vmA), events.KeyguardReleaseSubject(vmA)} {
		kg.serve(s, "keyguard", func(m *nats.Msg) []byte { return []byte("answer to " + m.Subject) })
		if got, err := c.request(s, []byte("{}")); err != nil || string(got) != "answer to "+s {
			t.Fatalf("%s: %q, %v", s, got, err)
		}
	}
}
