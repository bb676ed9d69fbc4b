package notifier_test

import (
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
)

// TestFiringThenResolved: a firing alert the filter lets through is
// delivered, then its resolve (an info alert the filter alone would not
// let through); an alert the filter refuses is not delivered.
func TestFiringThenResolved(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("sec", rc.URL, func(r *notifier.Request) {
		r.Filters = []notifier.Filter{{SeverityAtLeast: events.SeverityHigh}}
		r.Origin = "vigil.test"
	})
	key := events.AlertKey(vmA, "attestation")
	t0 := time.Now().UTC()
	e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA, Key: key, State: events.AlertFiring, At: t0})
	e.alert(events.Alert{Code: "schedule.deadline_missed", Severity: events.SeverityWarning})
	e.alert(events.Alert{Code: "vm.recovered", Severity: events.SeverityInfo, VMKey: vmA, Key: key, State: events.AlertResolved, At: t0.Add(time.Second)})
	e.alert(events.Alert{Code: "marker", VMKey: vmB})
	got := waitAccepted(t, rc, 3, 20*time.Second)
	var mine []string
	for _, d := range got {
		if d.Event.Data.Key == key {
			mine = append(mine, d.Event.Data.Alert.Code+"/"+string(d.Event.Data.State))
		}
	}
	if want := []string{"vm.untrusted/firing", "vm.recovered/resolved"}; !slices.Equal(mine, want) {
		t.Errorf("deliveries of %s: %v, want %v", key, mine, want)
	}
	for _, d := range got {
		if d.Event.Data.Alert.Code == "schedule.deadline_missed" {
			t.Errorf("a warning was delivered to a subscription for high and above")
		}
	}
}

// TestLateFiringDropped: a firing older than the resolve delivered for its
// key (published after it: a producer's retry) is never delivered.
func TestLateFiringDropped(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("late", rc.URL, nil)
	key := events.AlertKey(vmA, "attestation")
	t0 := time.Now().UTC()
	e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA, Key: key, State: events.AlertFiring, At: t0})
	e.alert(events.Alert{Code: "vm.recovered", VMKey: vmA, Key: key, State: events.AlertResolved, At: t0.Add(2 * time.Second)})
	e.alert(events.Alert{Code: "vm.stale", VMKey: vmA, Key: key, State: events.AlertFiring, At: t0.Add(time.Second)}) // late
	e.alert(events.Alert{Code: "vm.untrusted", Message: "again", VMKey: vmA, Key: key, State: events.AlertFiring, At: t0.Add(3 * time.Second)})
	got := waitAccepted(t, rc, 3, 20*time.Second)
	if want := []string{"vm.untrusted/firing", "vm.recovered/resolved", "vm.untrusted/firing"}; !slices.Equal(codes(got), want) {
		t.Errorf("deliveries %v, want %v", codes(got), want)
	}
}

// TestServerErrorsThenRecovery: a sink answering 500 for a while loses
// nothing, and every retry of an alert carries its one webhook-id.
func TestServerErrorsThenRecovery(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
		if n < 6 {
			return http.StatusInternalServerError
		}
		return http.StatusNoContent
	})
	e.subscribe("flaky", rc.URL, nil)
	const alerts = 5
	for i := range alerts {
		e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA, Key: events.AlertKey(vmA, string(rune('a'+i)))})
	}
	waitAccepted(t, rc, alerts, 20*time.Second)
	ids := map[string]int{}
	for _, d := range rc.deliveries() {
		if d.ID != d.Event.ID {
			t.Errorf("webhook-id %s, CloudEvent id %s", d.ID, d.Event.ID)
		}
		if d.Code/100 == 2 {
			ids[d.ID]++
		}
	}
	if len(ids) != alerts {
		t.Errorf("%d distinct alerts accepted, want %d", len(ids), alerts)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("%s accepted %d times", id, n)
		}
	}
	waitFor(t, 5*time.Second, "health showing the recovery", func() (bool, string) {
		h, err := e.store.Health(ctxT(t), "flaky")
		return err == nil && h.Delivered >= alerts && h.ConsecutiveFailures == 0 && h.LastError != "", "health not written yet"
	})
}

// TestRetryAfterHonoured: a 429 or 503 with Retry-After is retried no
// sooner than it says, with the same id.
func TestRetryAfterHonoured(t *testing.T) {
	for _, status := range []int{http.StatusTooManyRequests, http.StatusServiceUnavailable} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			e := newEnv(t)
			e.start(e.config())
			rc := newReceiver(t, func(n int, w http.ResponseWriter, r *http.Request) int {
				if n == 0 {
					w.Header().Set("Retry-After", "1")
					return status
				}
				return http.StatusOK
			})
			e.subscribe("busy", rc.URL, nil)
			e.alert(events.Alert{Code: "vm.untrusted", VMKey: vmA})
			waitAccepted(t, rc, 1, 20*time.Second)
			ds := rc.deliveries()
			if len(ds) != 2 {
				t.Fatalf("%d requests, want 2", len(ds))
			}
			if gap := ds[1].At.Sub(ds[0].At); gap < 900*time.Millisecond {
				t.Errorf("retried after %s, before the Retry-After of 1 s", gap)
			}
			if ds[0].ID != ds[1].ID {
				t.Errorf("retry with another webhook-id: %s, %s", ds[0].ID, ds[1].ID)
			}
		})
	}
}

// TestCopiesShareAlertState: two copies of the notifier share the
// subscription's consumer, each alert going to either. A condition
// raised twice (two copies of ingest reading one VM at once) is sent
// firing once, and its resolve follows whichever copy sent the firing.
func TestCopiesShareAlertState(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("copies", rc.URL, nil)
	const keys = 16
	key := func(i int) string { return events.AlertKey(vmA, fmt.Sprintf("config.c%d", i)) }
	t0 := time.Now().UTC()
	for i := range keys {
		for again := range 2 {
			e.alert(events.Alert{Code: fmt.Sprintf("config.c%d", i), VMKey: vmA, Key: key(i), State: events.AlertFiring,
				At: t0.Add(time.Duration(again) * time.Millisecond)})
		}
	}
	waitAccepted(t, rc, keys, 20*time.Second)
	for i := range keys {
		e.alert(events.Alert{Code: "config.fixed", Severity: events.SeverityInfo, VMKey: vmA, Key: key(i), State: events.AlertResolved, At: t0.Add(time.Second)})
	}
	waitAccepted(t, rc, 2*keys, 20*time.Second)
	// Anything still on its way arrives before the marker, published last.
	e.alert(events.Alert{Code: "marker", VMKey: vmB})
	waitFor(t, 20*time.Second, "the marker", func() (bool, string) {
		ds := rc.accepted()
		return slices.ContainsFunc(ds, func(d delivery) bool { return d.Event.Data.Alert.Code == "marker" }), fmt.Sprint(codes(ds))
	})
	per := map[string][]string{}
	for _, d := range rc.accepted() {
		per[d.Event.Data.Key] = append(per[d.Event.Data.Key], string(d.Event.Data.State))
	}
	for i := range keys {
		if got := per[key(i)]; !slices.Equal(got, []string{"firing", "resolved"}) {
			t.Errorf("%s: sent %v, want [firing resolved]", key(i), got)
		}
	}
	if n := len(rc.accepted()); n != 2*keys+1 {
		t.Errorf("%d notifications sent, want %d", n, 2*keys+1)
	}
}
