package busauth_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// TestAgentCannotEavesdropAnotherVMsNonceReply is the first exchange of
// issue 15: with "_INBOX.>" one VM's agent received another VM's key
// release nonce reply. Now no subscription covering another principal's
// inbox is accepted, and the victim's reply reaches the victim alone.
func TestAgentCannotEavesdropAnotherVMsNonceReply(t *testing.T) {
	e := newEnv(t)
	kg := e.as(K)
	answers := kg.serve(events.SubjectKeyguardNonceAll, "keyguard", func(m *nats.Msg) []byte { return []byte("nonce-for-the-victim") })
	attacker, victim := e.agent(vmA), e.agent(vmB)
	for _, s := range []string{"_INBOX.>", ">", "_INBOX_agent.>", "_INBOX_agent.*.>", busauth.AgentInboxPrefix(vmB) + ".>",
		busauth.InboxPrefix(K) + ".>", busauth.InboxPrefix(W) + ".>", "vigil.keyguard.>"} {
		attacker.mustRefuseSubscribe(s)
	}
	// What the attacker may hear: its own inbox and its challenge.
	own, err := attacker.subscribe(busauth.AgentInboxPrefix(vmA) + ".>")
	if err != nil {
		t.Fatal(err)
	}
	challenge, err := attacker.subscribe(events.ChallengeSubject(vmA))
	if err != nil {
		t.Fatal(err)
	}
	got, err := victim.request(events.KeyguardNonceSubject(vmB), []byte(`{"vm_key":"`+vmB+`"}`))
	if err != nil || string(got) != "nonce-for-the-victim" {
		t.Fatalf("victim: %q, %v", got, err)
	}
	if err := <-answers; err != nil {
		t.Fatal(err)
	}
	// Whatever the server had sent the attacker came before this PONG.
	attacker.flush()
	for _, sub := range []*nats.Subscription{own, challenge} {
		if n, _, _ := sub.Pending(); n != 0 {
			m, _ := sub.NextMsg(0)
			t.Fatalf("the attacker received %q on %s", m.Data, m.Subject)
		}
	}
}

// TestDeliveriesCannotBeStolen is the second exchange of issue 15: an
// agent answering a service's pull consumer deliveries (+NXT, +TERM with
// its own inbox) took 7 of 100 contraindicated verdicts from a runner set
// up as keyguard's. Here every other principal, each told the exact
// acknowledgement subject of every delivery before keyguard acknowledges
// it, tries to terminate it, to pull it to itself and to pull keyguard's
// consumer; every attempt is refused and keyguard gets all 100 verdicts,
// each delivered once.
func TestDeliveriesCannotBeStolen(t *testing.T) {
	const verdicts = 100
	e := newEnv(t)
	ctx := ctxT(t)
	kg := e.as(K)
	cons, err := kg.js.CreateOrUpdateConsumer(ctx, events.StreamEvents, jetstream.ConsumerConfig{
		Durable: busauth.ConsumerKeyguard, AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxAckPending: 1000,
		FilterSubjects: []string{events.VMEventSubject("*", events.KindVerdict), events.VMEventSubject("*", events.KindState), events.VMEventSubject("*", events.KindLifecycle)},
	})
	if err != nil {
		t.Fatal(err)
	}
	attackers := []*client{e.agent(vmA)}
	for _, p := range []busauth.Principal{I, W, A, N, C, D} {
		attackers = append(attackers, e.as(p))
	}
	for _, a := range attackers {
		a.mustRefuseSubscribe("_INBOX.>")
		a.mustRefuseSubscribe(busauth.InboxPrefix(K) + ".>")
		if err := a.publishMsg(&nats.Msg{Subject: "$JS.API.CONSUMER.MSG.NEXT.VIGIL_EVENTS.keyguard", Reply: a.creds.InboxPrefix + ".steal",
			Data: []byte(`{"batch":100}`)}); err == nil {
			t.Errorf("%s may pull keyguard's consumer", a.creds.Name)
		}
		if err := a.publishMsg(&nats.Msg{Subject: "$JS.API.CONSUMER.CREATE.VIGIL_EVENTS.keyguard", Reply: a.creds.InboxPrefix + ".steal",
			Data: []byte(`{"stream_name":"VIGIL_EVENTS","config":{"durable_name":"keyguard","filter_subject":"vigil.events.vm.*.key","ack_policy":"explicit"}}`)}); err == nil {
			t.Errorf("%s may re-create keyguard's consumer", a.creds.Name)
		}
	}
	w := e.as(W)
	for i := range verdicts {
		w.publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]any{"status": "contraindicated", "n": i})
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(10))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Stop()
	seen := map[uint64]int{}
	for len(seen) < verdicts {
		m, err := it.Next(jetstream.NextMaxWait(10 * time.Second))
		if err != nil {
			t.Fatalf("after %d verdicts: %v", len(seen), err)
		}
		md, err := m.Metadata()
		if err != nil {
			t.Fatal(err)
		}
		seen[md.Sequence.Stream]++
		ack := m.Reply()
		for _, a := range attackers {
			for _, msg := range []*nats.Msg{
				{Subject: ack, Data: []byte("+TERM")},
				{Subject: ack, Reply: a.creds.InboxPrefix + ".steal", Data: []byte("+NXT")},
				{Subject: ack, Data: []byte("+ACK")},
			} {
				if err := a.publishMsg(msg); err == nil {
					t.Fatalf("%s may answer keyguard's delivery %s with %s", a.creds.Name, ack, msg.Data)
				}
			}
		}
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatalf("keyguard's acknowledgement of %d: %v", md.Sequence.Stream, err)
		}
	}
	for seq, n := range seen {
		if n != 1 {
			t.Errorf("verdict %d delivered %d times", seq, n)
		}
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.AckFloor.Stream != verdicts || info.NumAckPending != 0 || info.NumRedelivered != 0 {
		t.Fatalf("keyguard's consumer: ack floor %d, pending %d, redelivered %d; want %d, 0, 0",
			info.AckFloor.Stream, info.NumAckPending, info.NumRedelivered, verdicts)
	}
}

// TestAgentCannotAnswerAnotherVMsChallenge: an agent cannot serve another
// VM's challenge subject, so with that VM's agent away the attest-worker's
// challenge finds no responder at all; with it there, the answer is its.
// Nor can the agent write into the attest-worker's inbox, or answer a
// challenge twice.
func TestAgentCannotAnswerAnotherVMsChallenge(t *testing.T) {
	e := newEnv(t)
	w, attacker := e.as(W), e.agent(vmA)
	attacker.mustRefuseSubscribe(events.ChallengeSubject(vmB))
	attacker.mustRefuseSubscribe("vigil.agent.*.challenge")
	attacker.mustRefuseSubscribe("vigil.agent.>")
	if _, err := w.request(events.ChallengeSubject(vmB), []byte("challenge")); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("challenge to an absent agent: %v, want no responders", err)
	}
	attacker.mustRefusePublish(busauth.InboxPrefix(W) + ".forged")

	victim := e.agent(vmB)
	victim.serve(events.ChallengeSubject(vmB), "", func(*nats.Msg) []byte { return []byte("the victim's bundle") })
	if got, err := w.request(events.ChallengeSubject(vmB), []byte("challenge")); err != nil || string(got) != "the victim's bundle" {
		t.Fatalf("challenge: %q, %v", got, err)
	}

	// Its own challenge: one answer.
	sub, err := attacker.subscribe(events.ChallengeSubject(vmA)) // the server has it
	if err != nil {
		t.Fatal(err)
	}
	replies := make(chan []byte, 1)
	go func() {
		m, err := w.nc.Request(events.ChallengeSubject(vmA), []byte("challenge"), 10*time.Second)
		if err == nil {
			replies <- m.Data
		}
		close(replies)
	}()
	m, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := attacker.publishMsg(&nats.Msg{Subject: m.Reply, Data: []byte("first")}); err != nil {
		t.Fatalf("answer: %v", err)
	}
	if err := attacker.publishMsg(&nats.Msg{Subject: m.Reply, Data: []byte("second")}); err == nil {
		t.Fatal("a second answer to one challenge was accepted")
	}
	if got := <-replies; string(got) != "first" {
		t.Fatalf("the attest-worker got %q", got)
	}
}

// TestRequesterCannotSteerRepliesOutsideTheResponderPermissions: the
// server does not check where a request asks its answer to go. An agent
// naming a bucket, a stream subject, another VM's challenge or another
// principal's inbox as its reply subject has keyguard's answer refused
// (keyguard may publish on agents' and admins' inboxes and its own
// subjects only, without allow_responses), and nothing is stored; a
// JetStream reply subject is refused from the agent itself.
func TestRequesterCannotSteerRepliesOutsideTheResponderPermissions(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	kg := e.as(K)
	answers := kg.serve(events.SubjectKeyguardNonceAll, "keyguard", func(*nats.Msg) []byte { return []byte(`{"nonce":"AAAA"}`) })
	attacker := e.agent(vmA)
	for _, reply := range []string{
		"$KV." + events.BucketStatus + "." + vmB,
		"$KV." + events.BucketVMs + "." + vmB,
		events.VerdictSubject(vmB),
		events.AttestJobSubject(vmB),
		events.AlertSubject(events.SeverityCritical, "") + ".x",
		events.ChallengeSubject(vmB),
		busauth.InboxPrefix(W) + ".x",
		events.KeyguardReleaseSubject(vmB),
	} {
		if err := attacker.publishMsg(&nats.Msg{Subject: events.KeyguardNonceSubject(vmA), Reply: reply, Data: []byte("{}")}); err != nil {
			t.Fatalf("request with reply %s: %v", reply, err)
		}
		select {
		case err := <-answers:
			if err == nil {
				t.Errorf("keyguard's answer was published on %s", reply)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("keyguard did not answer the request with reply %s", reply)
		}
	}
	st, err := e.admin.js.KeyValue(ctx, events.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, vmB); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("vigil-status/%s after the attack: %v", vmB, err)
	}
	for _, s := range []string{events.StreamEvents, events.StreamJobs, events.StreamAlerts} {
		str, err := e.admin.js.Stream(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		if n := str.CachedInfo().State.Msgs; n != 0 {
			t.Errorf("%s holds %d messages after the attack", s, n)
		}
	}
	// A reply subject in JetStream's namespace would make the answer an
	// API request: the server refuses such a request outright.
	if err := attacker.publishMsg(&nats.Msg{Subject: events.KeyguardNonceSubject(vmA), Reply: "$JS.API.STREAM.PURGE.VIGIL_JOBS", Data: []byte("{}")}); err == nil {
		t.Error("a request with a JetStream reply subject was accepted")
	}
}

// TestOnlyAdminProvisionsAndNobodyDeletesOrPurges: real stream
// administration requests (bodies that would change the streams) from
// every principal: creating, updating (to keep one message), deleting and
// purging VIGIL_EVENTS, VIGIL_CHECKPOINTS, VIGIL_JOBS and the grants
// bucket. Only the administrator's creates and updates reach the server;
// deletes and purges are refused for everyone; the streams keep their
// messages and limits. (The administrator's updates are provisioning:
// adminWork.)
func TestOnlyAdminProvisionsAndNobodyDeletesOrPurges(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
	w := e.as(W)
	w.publishEvent(ctx, events.VerdictSubject(vmB), events.TypeVerdict, map[string]string{})
	w.publishEvent(ctx, events.VerdictSubject(vmA), events.TypeVerdict, map[string]string{})
	w.publishEvent(ctx, events.AttestJobSubject(vmB), events.TypeJob, events.Job{VMKey: vmB})
	if _, err := e.as(A).js.Publish(ctx, events.SubjectCheckpoint, []byte("cp")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.as(K).js.Publish(ctx, "$KV."+events.BucketGrants+"."+vmB+".local.k", []byte("grant")); err != nil {
		t.Fatal(err)
	}
	streams := []string{events.StreamEvents, events.StreamCheckpoints, events.StreamJobs, "KV_" + events.BucketGrants}
	msgs := map[string]uint64{}
	for _, s := range streams {
		str, err := e.admin.js.Stream(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		msgs[s] = str.CachedInfo().State.Msgs
	}
	request := func(c *client, verb, stream string) error {
		var body []byte
		switch verb {
		case "CREATE", "UPDATE":
			body, _ = json.Marshal(jetstream.StreamConfig{Name: stream, Subjects: []string{"evil.>"}, MaxMsgs: 1, Storage: jetstream.FileStorage})
		case "PURGE":
			body = []byte(`{}`)
		}
		return c.publishMsg(&nats.Msg{Subject: "$JS.API.STREAM." + verb + "." + stream, Reply: c.creds.InboxPrefix + ".r", Data: body})
	}
	for _, p := range append(services, G) {
		var c *client
		if p == G {
			c = e.agent(vmA)
		} else {
			c = e.as(p)
		}
		for _, s := range streams {
			for _, verb := range []string{"UPDATE", "DELETE", "PURGE"} {
				if p == D && verb == "UPDATE" {
					continue // provisioning, as adminWork shows
				}
				if err := request(c, verb, s); err == nil {
					t.Errorf("%s may %s %s", p, verb, s)
				}
			}
			if err := request(c, "CREATE", "EVIL_"+strings.TrimPrefix(s, "KV_")); err == nil {
				t.Errorf("%s may create a stream EVIL_%s", p, s)
			}
		}
	}
	for _, s := range streams {
		str, err := e.admin.js.Stream(ctx, s)
		if err != nil {
			t.Fatalf("%s after the attempts: %v", s, err)
		}
		if got := str.CachedInfo().State.Msgs; got != msgs[s] {
			t.Errorf("%s holds %d messages, had %d", s, got, msgs[s])
		}
		if str.CachedInfo().Config.MaxMsgs == 1 {
			t.Errorf("%s was updated", s)
		}
	}
}

// TestKVWritesOutsideOwnBuckets: every principal writes a key into every
// bucket; only the buckets' writers (docs/design.md §4) store it.
func TestKVWritesOutsideOwnBuckets(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)
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
	for _, p := range append(services, G) {
		var c *client
		if p == G {
			c = e.agent(vmA)
		} else {
			c = e.as(p)
		}
		for _, b := range events.Buckets(events.Topology{}) {
			key := "written-by-" + string(p)
			subject := "$KV." + b.Bucket + "." + key
			may := slices.Contains(writers[b.Bucket], p)
			if may {
				// Stored once the stream acknowledges it.
				if _, err := c.js.Publish(ctx, subject, []byte("x")); err != nil {
					t.Errorf("%s cannot write %s: %v", p, b.Bucket, err)
					continue
				}
			} else if err := c.publishMsg(&nats.Msg{Subject: subject, Data: []byte("x")}); err == nil {
				t.Errorf("%s may write %s", p, b.Bucket)
			}
			kv, err := e.admin.js.KeyValue(ctx, b.Bucket)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Get(ctx, key); may != (err == nil) || !may && !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Errorf("%s's write to %s: stored %v, want %v", p, b.Bucket, err == nil, may)
			}
		}
	}
}

// TestAdminActionsAttributedByTheServer: an administrator may publish a
// policy version and request keyguard's operator API only under its own
// name, so that the subject names the actor the server authenticated.
func TestAdminActionsAttributedByTheServer(t *testing.T) {
	e := newEnv(t)
	creds, err := e.set.AdminCreds("alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	alice := e.connect(creds)
	for _, tc := range []struct {
		subject string
		ok      bool
	}{
		{busauth.AdminPolicySubject("default", "alice"), true},
		{busauth.AdminRequestSubject("revoke", "alice"), true},
		{busauth.AdminRequestSubject("grant", "alice"), true},
		{busauth.AdminPolicySubject("default", busauth.DefaultAdminName), false},
		{busauth.AdminRequestSubject("revoke", busauth.DefaultAdminName), false},
		{busauth.AdminRequestSubject("revoke", "*"), false},
		{"vigil.events.policy.default", false},
		{"vigil.keyguard.admin.revoke", false},
	} {
		if err := alice.publish(tc.subject); (err == nil) != tc.ok {
			t.Errorf("alice publishing on %s: %v, want allowed %v", tc.subject, err, tc.ok)
		}
	}
	if _, err := alice.subscribe(busauth.AdminInboxPrefix("alice") + ".>"); err != nil {
		t.Errorf("alice's inbox: %v", err)
	}
	alice.mustRefuseSubscribe(busauth.AdminInboxPrefix(busauth.DefaultAdminName) + ".>")
}

// TestInProcessAgentIsConfinedAsOverTCP: an agent connected inside the
// server's process (as vigil dev's simulated agents are, with
// bus.Config.InProcess) is authenticated and confined exactly as over TCP:
// its own challenge and the keyguard requests only, nothing of another VM
// or principal, no events; and it cannot connect without valid
// credentials.
func TestInProcessAgentIsConfinedAsOverTCP(t *testing.T) {
	e := newEnv(t)
	inProcess := nats.InProcessServer(e.srv.Embedded().Server)
	a := e.agent(vmA, inProcess)
	if _, err := a.subscribe(events.ChallengeSubject(vmA)); err != nil {
		t.Fatalf("own challenge: %v", err)
	}
	if err := a.publish(events.KeyguardNonceSubject(vmA)); err != nil {
		t.Fatalf("keyguard nonce request: %v", err)
	}
	a.mustRefuseSubscribe(events.ChallengeSubject(vmB))
	a.mustRefuseSubscribe("_INBOX.>")
	a.mustRefuseSubscribe(busauth.AgentInboxPrefix(vmB) + ".>")
	a.mustRefuseSubscribe(busauth.InboxPrefix(busauth.Keyguard) + ".>")
	a.mustRefusePublish("vigil.events.verdict." + vmA)
	a.mustRefusePublish("vigil.alert.critical." + vmA)
	a.mustRefusePublish("$JS.API.STREAM.DELETE." + events.StreamEvents)

	// Another VM's JWT without its key: refused at connect (over an
	// in-process pipe the refusal takes the server's write deadline, 10 s).
	b, err := e.set.AgentCreds(vmB, 0)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	if nc, err := nats.Connect(e.srv.URL(), inProcess, nats.UserJWT(func() (string, error) { return b.JWT, nil }, stranger.Sign)); err == nil {
		nc.Close()
		t.Fatal("an in-process connection with another VM's JWT and a key of its own was accepted")
	}
}
