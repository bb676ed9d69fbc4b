package auditor

import (
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// vmKeys are the VM keys events are spread over.
var vmKeys = func() []string {
	var ks []string
	for i := range 8 {
		ks = append(ks, events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i)))
	}
	return ks
}()

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkExactlyOnce checks that the records hold the events ev-0..ev-(n-1)
// each exactly once, in stream order.
func checkExactlyOnce(t testing.TB, recs []auditlog.Record, n int) {
	t.Helper()
	seen := make(map[string]int, n)
	var lastSeq uint64
	for i := range recs {
		r := &recs[i]
		if r.Seq <= lastSeq {
			t.Errorf("record %d: seq %d after %d", i, r.Seq, lastSeq)
		}
		lastSeq = r.Seq
		if r.Kind != auditlog.KindEvent {
			t.Errorf("record %d: kind %s (%s)", i, r.Kind, r.Reason)
			continue
		}
		env, err := r.Envelope()
		if err != nil {
			t.Fatal(err)
		}
		seen[env.ID]++
	}
	for i := range n {
		id := "ev-" + strconv.Itoa(i)
		if seen[id] != 1 {
			t.Errorf("event %s logged %d times", id, seen[id])
		}
	}
	if len(recs) != n {
		t.Errorf("log has %d records, want %d", len(recs), n)
	}
}

// A field check is one field of a value checked: "" when it is as wanted,
// else what differs. fieldsMatch reports them.
//
//	if !fieldsMatch(t, "report", rep, eq("Gaps", rep.Gaps, 2), eq("LastSeq", rep.LastSeq, 20)) {
//		t.FailNow()
//	}

// eq checks that field has the value want.
func eq[T comparable](field string, got, want T) string {
	if got == want {
		return ""
	}
	return fmt.Sprintf("%s = %v, want %v", field, got, want)
}

// holds checks a field against a condition other than equality: ok says
// whether it holds, want describes it ("> 0").
func holds(field string, ok bool, got any, want string) string {
	if ok {
		return ""
	}
	return fmt.Sprintf("%s = %v, want %s", field, got, want)
}

// fieldsMatch reports each failed field check of what (an error each,
// naming the field) and then, if any failed, the whole value; it returns
// whether every check passed.
func fieldsMatch(t testing.TB, what string, value any, checks ...string) bool {
	t.Helper()
	ok := true
	for _, c := range checks {
		if c != "" {
			t.Errorf("%s: %s", what, c)
			ok = false
		}
	}
	if !ok {
		t.Logf("%s: %+v", what, value)
	}
	return ok
}
