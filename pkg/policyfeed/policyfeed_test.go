package policyfeed_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/policyfeed"
)

const policyID = "p"

// policy returns a valid policy document with id and version.
func policy(id string, version int, description string) *appraise.Policy {
	p := appraise.DefaultPolicy()
	p.ID, p.Version, p.Description = id, version, description
	return p
}

// published is one io.vigil.policy.v1 event on the subject of policyID.
type published struct {
	name    string // the event's policy name
	version int    // the event's version
	doc     string // the event's document
	raw     string // when set, the whole message instead of an event
}

// valid is a version of policyID as vigil policy publish makes it.
func valid(version int, description string) published {
	return published{name: policyID, version: version, doc: document(policy(policyID, version, description))}
}

func document(p *appraise.Policy) string {
	b, err := p.Marshal()
	if err != nil {
		panic(err)
	}
	return string(b)
}

func publish(t *testing.T, js jetstream.JetStream, ps ...published) {
	t.Helper()
	for _, p := range ps {
		data := []byte(p.raw)
		if p.raw == "" {
			env, err := events.New(events.TypePolicy, "test", events.PolicySubject(policyID, "test"), events.Policy{
				Name: p.name, Version: p.version, Document: p.doc, Actor: "test", Reason: "test", At: time.Now().UTC()})
			if err != nil {
				t.Fatal(err)
			}
			if data, err = env.Marshal(); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := js.Publish(t.Context(), events.PolicySubject(policyID, "test"), data); err != nil {
			t.Fatal(err)
		}
	}
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not %s after %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// changes records the versions a feed puts in force.
type changes struct {
	mu       sync.Mutex
	versions []int
}

func (c *changes) record(_ context.Context, ch policyfeed.Change) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ch.Previous.Version >= ch.Policy.Version || ch.Event.Version != ch.Policy.Version {
		panic(fmt.Sprintf("change from version %d to %d (event %d)", ch.Previous.Version, ch.Policy.Version, ch.Event.Version))
	}
	c.versions = append(c.versions, ch.Policy.Version)
}

func (c *changes) get() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.versions)
}

// follow runs a feed starting with version initial of policyID until the
// test ends.
func follow(t *testing.T, js jetstream.JetStream, initial int, opts ...policyfeed.Option) *policyfeed.Feed {
	t.Helper()
	f, err := policyfeed.New(js, policy(policyID, initial, "initial"), append([]policyfeed.Option{policyfeed.WithRetryWait(50 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Follow(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Follow: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Follow did not return after its context ended")
		}
	})
	return f
}

func TestFollow(t *testing.T) {
	t.Parallel()
	refuse := func(p *appraise.Policy) error {
		if p.Description == "refused" {
			return errors.New("refused by the check")
		}
		return nil
	}
	other := policy("other", 5, "")
	cases := []struct {
		name   string
		stored []published // before the feed starts
		after  []published // once it has read what was stored
		want   []int       // versions put in force, in order
	}{
		{"newer version takes effect", nil, []published{valid(3, ""), valid(5, "")}, []int{3, 5}},
		{"latest stored version applies at start", []published{valid(2, ""), valid(3, "")}, nil, []int{3}},
		{"older or equal version ignored", nil, []published{valid(1, "older"), valid(2, "same as in force"), valid(3, ""), valid(3, "again")}, []int{3}},
		{"stored older version ignored", []published{valid(1, "older")}, nil, nil},
		{"document of another policy ignored", nil, []published{{name: policyID, version: 5, doc: document(other)}}, nil},
		{"event of another policy name ignored", nil, []published{{name: "other", version: 3, doc: document(policy(policyID, 3, ""))}}, nil},
		{"document version not the event's ignored", nil, []published{{name: policyID, version: 3, doc: document(policy(policyID, 4, ""))}}, nil},
		{"unparsable document ignored", nil, []published{{name: policyID, version: 5, doc: "id: p\nversion: 5\nsnp: {allow_debug: maybe}\n"}}, nil},
		{"unreadable event ignored", nil, []published{{raw: "not an event"}, {raw: `{"specversion":"1.0","type":"io.vigil.vm.key.v1"}`}}, nil},
		{"version refused by the check ignored", nil, []published{valid(3, "refused"), valid(4, "")}, []int{4}},
		{"stored version refused by the check ignored", []published{valid(3, "refused")}, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, js := natstest.Start(t).JetStream()
			publish(t, js, tc.stored...)
			var got changes
			f := follow(t, js, 2, policyfeed.WithCheck(refuse), policyfeed.WithOnChange(got.record),
				policyfeed.WithLogger(slog.New(slog.DiscardHandler)))
			select {
			case <-f.Synced():
			case <-time.After(20 * time.Second):
				t.Fatal("not synced after 20s")
			}
			if d := diff(got.get(), tc.want); tc.after == nil && d != "" {
				t.Fatalf("in force once synced: %s", d)
			}
			publish(t, js, tc.after...)
			// A newer valid version last: once it is in force, every
			// event before it was handled.
			const last = 100
			publish(t, js, valid(last, ""))
			waitFor(t, 20*time.Second, "the last version in force", func() bool { return f.Policy().Version == last })
			if d := diff(got.get(), append(slices.Clone(tc.want), last)); d != "" {
				t.Fatalf("versions put in force: %s", d)
			}
		})
	}
}

func diff(got, want []int) string {
	if slices.Equal(got, want) {
		return ""
	}
	return fmt.Sprintf("got %v, want %v", got, want)
}

// While NATS cannot be reached the feed keeps the policy in force and
// retries; once NATS is back it follows again.
func TestFollowRetriesWhileNATSIsDown(t *testing.T) {
	t.Parallel()
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	publish(t, js, valid(2, ""))
	srv.Stop()
	logs := filepath.Join(t.TempDir(), "log")
	w, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	hasLogged := func(msg string) func() bool {
		return func() bool { b, _ := os.ReadFile(logs); return bytes.Contains(b, []byte(msg)) }
	}
	f := follow(t, js, 1, policyfeed.WithLogger(slog.New(slog.NewTextHandler(w, nil))))
	waitFor(t, 30*time.Second, "a retry logged", hasLogged("cannot follow policy versions; retrying"))
	if v := f.Policy().Version; v != 1 {
		t.Fatalf("version %d in force while NATS is down, want 1", v)
	}
	select {
	case <-f.Synced():
		t.Fatal("synced while NATS is down")
	default:
	}
	srv.Restart()
	waitFor(t, 30*time.Second, "the stored version in force", func() bool { return f.Policy().Version == 2 })
	publish(t, js, valid(3, ""))
	waitFor(t, 20*time.Second, "the new version in force", func() bool { return f.Policy().Version == 3 })
	waitFor(t, 5*time.Second, "the version put in force logged", hasLogged("policy version in force"))
}

func TestNew(t *testing.T) {
	t.Parallel()
	if _, err := policyfeed.New(nil, nil); err == nil {
		t.Fatal("no error without an initial policy")
	}
	refused := errors.New("unusable")
	_, err := policyfeed.New(nil, policy(policyID, 1, ""), policyfeed.WithCheck(func(*appraise.Policy) error { return refused }))
	if !errors.Is(err, refused) {
		t.Fatalf("initial policy refused by the check: %v", err)
	}
	// A policy without an id has no versions to follow.
	f, err := policyfeed.New(nil, policy("", 1, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Follow(t.Context()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Synced():
	default:
		t.Fatal("a policy without an id is not synced")
	}
}

// Under auth an administrator publishes on its own pinned subject; the
// actor the feed records is that administrator's name, not the one the
// payload claims, and the unpinned subject of earlier releases is not read.
func TestActorIsTheSubjects(t *testing.T) {
	t.Parallel()
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	srv.JetStream() // provisions as the first administrator
	alice, err := set.AdminCreds("alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	ajs, err := jetstream.New(srv.ConnectCreds(alice))
	if err != nil {
		t.Fatal(err)
	}
	kjs, err := jetstream.New(srv.ConnectAs(busauth.Keyguard))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var actors []string
	f := follow(t, kjs, 2, policyfeed.WithLogger(slog.New(slog.DiscardHandler)), policyfeed.WithOnChange(func(_ context.Context, c policyfeed.Change) {
		mu.Lock()
		defer mu.Unlock()
		actors = append(actors, c.Event.Actor)
	}))
	subject := busauth.AdminPolicySubject(policyID, "alice")
	env, err := events.New(events.TypePolicy, "test", subject, events.Policy{
		Name: policyID, Version: 3, Document: document(policy(policyID, 3, "")), Actor: "bob", At: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	data, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Alice may not publish as bob.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := ajs.Publish(ctx, busauth.AdminPolicySubject(policyID, "bob"), data); err == nil {
		t.Fatal("alice published on bob's policy subject")
	}
	if _, err := ajs.Publish(t.Context(), subject, data); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "alice's version in force", func() bool { return f.Policy().Version == 3 })
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(actors, []string{"alice"}) {
		t.Fatalf("recorded actors %q, want [alice]", actors)
	}
}

// A version on the unpinned subject of earlier releases is not read.
func TestUnpinnedSubjectIgnored(t *testing.T) {
	t.Parallel()
	_, js := natstest.Start(t).JetStream()
	env, err := events.New(events.TypePolicy, "test", "vigil.events.policy."+policyID, events.Policy{
		Name: policyID, Version: 5, Document: document(policy(policyID, 5, "")), Actor: "test", At: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := env.Marshal()
	if _, err := js.Publish(t.Context(), "vigil.events.policy."+policyID, data); err != nil {
		t.Fatal(err)
	}
	f := follow(t, js, 2, policyfeed.WithLogger(slog.New(slog.DiscardHandler)))
	select {
	case <-f.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("not synced after 20s")
	}
	publish(t, js, valid(3, ""))
	waitFor(t, 20*time.Second, "version 3 in force", func() bool { return f.Policy().Version == 3 })
}
