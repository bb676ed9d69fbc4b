package notifier_test

import (
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// publishRetrying publishes an alert, retrying while the bus is away.
func (e *env) publishRetrying(a events.Alert) {
	e.t.Helper()
	a.At = time.Now().UTC()
	a.Severity, a.Message = events.SeverityCritical, a.Code
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := e.conn.PublishAlert(ctxT(e.t), "test", "", a)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("publish: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestNATSRestart: alerts published before and after a restart of the
// NATS server are all delivered, each once.
func TestNATSRestart(t *testing.T) {
	e := newEnv(t)
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("steady", rc.URL, nil)
	e.alert(events.Alert{Code: "before", VMKey: vmA})
	waitAccepted(t, rc, 1, 10*time.Second)
	e.srv.Restart()
	e.publishRetrying(events.Alert{Code: "after", VMKey: vmA})
	got := waitAccepted(t, rc, 2, 30*time.Second)
	if want := []string{"before/firing", "after/firing"}; !equalSet(codes(got), want) {
		t.Errorf("deliveries %v, want %v", codes(got), want)
	}
}

// TestClusterNodeLoss: on a 3-node cluster, losing the alerts stream's
// leader loses no alert.
func TestClusterNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("3-node cluster")
	}
	c := natstest.StartCluster(t, 3)
	nc := c.Connect()
	natstest.Provision(t, nc, events.Topology{Replicas: 3})
	e := newEnvAt(t, c.URLs())
	e.start(e.config())
	rc := newReceiver(t, nil)
	e.subscribe("replicated", rc.URL, nil)
	for i := range 5 {
		e.alert(events.Alert{Code: "before", VMKey: vmA, Key: events.AlertKey(vmA, string(rune('a'+i)))})
	}
	waitAccepted(t, rc, 5, 30*time.Second)
	c.StreamLeader(events.StreamAlerts, 30*time.Second).Stop()
	for i := range 5 {
		e.publishRetrying(events.Alert{Code: "after", VMKey: vmB, Key: events.AlertKey(vmB, string(rune('a'+i)))})
	}
	got := waitAccepted(t, rc, 10, 60*time.Second)
	n := map[string]int{}
	for _, d := range got {
		n[d.Event.Data.Alert.Code]++
	}
	if n["before"] != 5 || n["after"] != 5 {
		t.Errorf("deliveries %v", n)
	}
}
