package notifier_test

import (
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
)

// TestGoneDisables: 410 disables the subscription (nothing more is sent);
// resuming it delivers what waited.
func TestGoneDisables(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	var gone atomic.Bool
	gone.Store(true)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if gone.Load() {
			return http.StatusGone
		}
		return http.StatusOK
	})
	e.subscribe("gone", rc.URL, nil)
	e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
	waitFor(t, 10*time.Second, "the subscription disabled", func() (bool, string) {
		h, err := e.store.Health(ctxT(t), "gone")
		return err == nil && h.Disabled, "not yet"
	})
	e.alert(events.Alert{Code: "vm.stale", VMKey: vmB})
	// A second subscription sees the alert: the first had its chance.
	other := newReceiver(t, nil)
	e.subscribe("other", other.URL, nil)
	e.alert(events.Alert{Code: "marker", VMKey: vmB})
	waitAccepted(t, other, 1, 10*time.Second)
	if n := len(rc.deliveries()); n != 1 {
		t.Fatalf("a disabled subscription took %d requests, want 1", n)
	}
	gone.Store(false)
	if _, err := e.store.UpdateSubscription(ctxT(t), "gone", func(s *notifier.Subscription) error {
		s.ResumedAt = time.Now().UTC()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got := waitAccepted(t, rc, 3, 20*time.Second)
	if want := []string{"vm.untrusted/firing", "vm.stale/firing", "marker/firing"}; !equalSet(codes(got), want) {
		t.Errorf("after resume: %v, want %v", codes(got), want)
	}
}

func equalSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestRejectDeadLettersAndReplay: a 4xx goes to VIGIL_ALERTS_DLQ at once
// (one request); a replay delivers it once the sink takes it.
func TestRejectDeadLettersAndReplay(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	var reject atomic.Bool
	reject.Store(true)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if reject.Load() {
			return http.StatusBadRequest
		}
		return http.StatusAccepted
	})
	e.subscribe("strict", rc.URL, nil)
	e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
	dl := waitDeadLetter(t, e, "strict")
	if dl.Status != http.StatusBadRequest || dl.Notification.Alert.Code != "vm.untrusted" {
		t.Errorf("dead letter %+v", dl)
	}
	if n := len(rc.deliveries()); n != 1 {
		t.Errorf("a rejected alert was sent %d times, want 1", n)
	}
	reject.Store(false)
	env, err := events.New(notifier.TypeReplay, "test", events.AlertReplaySubject("strict"), dl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Publish(ctxT(t), events.AlertReplaySubject("strict"), env); err != nil {
		t.Fatal(err)
	}
	got := waitAccepted(t, rc, 1, 10*time.Second)
	if got[0].ID != dl.Notification.ID {
		t.Errorf("replayed with id %s, the dead letter's is %s", got[0].ID, dl.Notification.ID)
	}
}

// waitDeadLetter reads the first dead letter of subscription id.
func waitDeadLetter(t *testing.T, e *env, id string) notifier.DeadLetter {
	t.Helper()
	ctx := ctxT(t)
	var dl notifier.DeadLetter
	waitFor(t, 10*time.Second, "a dead letter", func() (bool, string) {
		s, err := e.conn.JS.Stream(ctx, events.StreamAlertsDLQ)
		if err != nil {
			return false, err.Error()
		}
		m, err := s.GetLastMsgForSubject(ctx, events.AlertDLQSubject(id))
		if err != nil {
			return false, err.Error()
		}
		env, err := events.Parse(m.Data)
		if err == nil {
			err = env.Decode(notifier.TypeDeadLetter, &dl)
		}
		return err == nil, "undecodable"
	})
	return dl
}

// TestSlowSinkDelaysOnlyItself: a sink that hangs holds up its own
// subscription, not another's.
func TestSlowSinkDelaysOnlyItself(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.Concurrency = 1
	e.start(cfg)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	hung := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		return http.StatusOK
	})
	fast := newReceiver(t, nil)
	e.subscribe("hung", hung.URL, nil)
	e.subscribe("fast", fast.URL, nil)
	for range 5 {
		e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
	}
	start := time.Now()
	waitAccepted(t, fast, 5, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the fast sink took %s", d)
	}
}

// TestRestartLosesNothing: the notifier stopped while a delivery is in
// flight (the sink has not answered) delivers it after a restart.
func TestRestartLosesNothing(t *testing.T) {
	e := newEnv(t)
	stop := e.start(e.config())
	inFlight := make(chan struct{}, 1)
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n == 0 {
			inFlight <- struct{}{}
			<-r.Context().Done() // the notifier goes away mid-delivery
			return http.StatusServiceUnavailable
		}
		return http.StatusOK
	})
	e.subscribe("durable", rc.URL, nil)
	a := e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
	select {
	case <-inFlight:
	case <-time.After(10 * time.Second):
		t.Fatal("no delivery started")
	}
	stop()
	e.start(e.config())
	got := waitAccepted(t, rc, 1, 20*time.Second)
	if got[0].Event.Data.Alert.Code != a.Code || got[0].ID != rc.deliveries()[0].ID {
		t.Errorf("after restart: %v (first attempt %s)", codes(got), rc.deliveries()[0].ID)
	}
}

// TestDigestsBurst: a rate-limited subscription sends a burst as one
// alert and then digests listing the rest; nothing is lost.
func TestDigestsBurst(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("chat", rc.URL, func(r *notifier.Request) { r.RateLimit = 2 })
	const burst = 20
	for i := range burst {
		e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA, Key: events.AlertKey(vmA, string(rune('a'+i)))})
	}
	seen := map[string]bool{}
	waitFor(t, 20*time.Second, "every alert delivered", func() (bool, string) {
		for _, d := range rc.accepted() {
			if len(d.Event.Data.Digest) == 0 {
				seen[d.Event.Data.Key] = true
			}
			for _, a := range d.Event.Data.Digest {
				seen[a.Key] = true
			}
		}
		return len(seen) == burst, "not yet"
	})
	if n := len(rc.accepted()); n > burst/2 {
		t.Errorf("%d deliveries for a burst of %d at 2/s: digests expected", n, burst)
	}
}

// TestSilence: an alert a silence matches is not delivered; others are.
func TestSilence(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("quiet", rc.URL, nil)
	sl := events.Silence{ID: "maint", Match: map[string]string{"code": "vm.stale", "vm": vmA}, Reason: "maintenance",
		Actor: "test", Created: time.Now().UTC(), Until: time.Now().Add(time.Hour)}
	if err := e.store.PutSilence(ctxT(t), sl); err != nil {
		t.Fatal(err)
	}
	// Until the notifier follows the silence: a silenced alert and a
	// marker of one key (delivered in order) per round; the silence holds
	// once a round's marker arrives without its alert.
	round := 0
	waitFor(t, 10*time.Second, "the notifier to follow the silence", func() (bool, string) {
		key := fmt.Sprintf("probe-%d", round)
		round++
		now := time.Now().UTC()
		e.alert(events.Alert{Code: "vm.stale", VMKey: vmA, Key: key, At: now})
		e.alert(events.Alert{Code: "marker", VMKey: vmA, Key: key, At: now.Add(time.Millisecond)})
		waitFor(t, 10*time.Second, "the marker of "+key, func() (bool, string) {
			for _, d := range rc.accepted() {
				if d.Event.Data.Key == key && d.Event.Data.Alert.Code == "marker" {
					return true, ""
				}
			}
			return false, "not yet"
		})
		for _, d := range rc.accepted() {
			if d.Event.Data.Key == key && d.Event.Data.Alert.Code == "vm.stale" {
				return false, "a silenced alert was delivered"
			}
		}
		return true, ""
	})
	e.alert(events.Alert{Code: "vm.stale", VMKey: vmB})
	e.alert(events.Alert{Code: "vm.stale", VMKey: vmA})
	waitFor(t, 10*time.Second, "the unsilenced alert", func() (bool, string) {
		for _, d := range rc.accepted() {
			if d.Event.Data.Alert.VMKey == vmB {
				return true, ""
			}
		}
		return false, "not yet"
	})
}

// TestUnhealthySubscriptionAlerts: a subscription failing longer than the
// threshold is marked unhealthy and the other subscriptions are told; it
// is resolved once it delivers again.
func TestUnhealthySubscriptionAlerts(t *testing.T) {
	e := newEnv(t)
	cfg := e.config()
	cfg.UnhealthyAfter = 300 * time.Millisecond
	e.start(cfg)
	var failing atomic.Bool
	failing.Store(true)
	bad := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if failing.Load() {
			return http.StatusBadGateway
		}
		return http.StatusOK
	})
	watcher := newReceiver(t, nil)
	e.subscribe("bad", bad.URL, nil)
	e.subscribe("watcher", watcher.URL, func(r *notifier.Request) {
		r.Filters = []notifier.Filter{{Exact: map[string]string{notifier.AttrCode: notifier.AlertCodeUnhealthy}}}
	})
	e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
	got := waitAccepted(t, watcher, 1, 10*time.Second)
	if got[0].Event.Data.State != "firing" {
		t.Errorf("first unhealthy alert %s", got[0].Event.Data.State)
	}
	h, err := e.store.Health(ctxT(t), "bad")
	if err != nil || !h.Unhealthy || h.ConsecutiveFailures == 0 {
		t.Errorf("health %+v, %v", h, err)
	}
	failing.Store(false)
	got = waitAccepted(t, watcher, 2, 10*time.Second)
	if got[1].Event.Data.State != "resolved" {
		t.Errorf("then %s, want resolved", got[1].Event.Data.State)
	}
	for _, d := range bad.accepted() {
		if d.Event.Data.Alert.Code == notifier.AlertCodeUnhealthy {
			t.Error("the unhealthy subscription was told about itself")
		}
	}
}

// TestDeleteRemovesConsumer: deleting a subscription deletes its consumer.
func TestDeleteRemovesConsumer(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	sub := e.subscribe("temp", rc.URL, nil)
	ctx := ctxT(t)
	waitFor(t, 10*time.Second, "the consumer", func() (bool, string) {
		_, err := e.conn.JS.Consumer(ctx, events.StreamAlerts, sub.Durable())
		return err == nil, "none"
	})
	if err := e.store.DeleteSubscription(ctx, "temp"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the consumer deleted", func() (bool, string) {
		_, err := e.conn.JS.Consumer(ctx, events.StreamAlerts, sub.Durable())
		return err != nil && errors.Is(err, jetstream.ErrConsumerNotFound), "still there"
	})
}
