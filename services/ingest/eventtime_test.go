package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// year2126 is the date of the forged events: a century ahead.
var year2126 = time.Date(2126, 1, 1, 0, 0, 0, 0, time.UTC)

// notifDeletedCE is an Azure Resource Notifications "Deleted" CloudEvent
// sent at sent, whose data says the deletion happened at happened.
func notifDeletedCE(id, vm string, sent, happened time.Time) string {
	return fmt.Sprintf(`{"specversion":"1.0","id":%q,"source":"/subscriptions/%s","type":%q,"subject":%q,"time":%q,
	"data":{"resourceInfo":{"id":%q,"name":%q,"type":"Microsoft.Compute/virtualMachines"},"operationalInfo":{"resourceEventTime":%q},"apiVersion":"2023-07-01"}}`,
		id, testSub, normalize.TypeNotifDeleted, vmResourceID(vm), sent.UTC().Format(time.RFC3339Nano),
		vmResourceID(vm), vm, happened.UTC().Format(time.RFC3339Nano))
}

// putRecord writes an inventory record directly, as ingest before event
// times were bounded could have stored it.
func (h *harness) putRecord(vm events.VM) {
	h.t.Helper()
	ctx := context.Background()
	if err := events.Provision(ctx, h.js, events.Topology{}); err != nil {
		h.t.Fatal(err)
	}
	kv, err := h.js.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		h.t.Fatal(err)
	}
	b, err := json.Marshal(vm)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, err := kv.Put(ctx, vm.VMKey, b); err != nil {
		h.t.Fatal(err)
	}
}

// forgedRecord is the record a forged "deleted" (or "started") dated 2126
// left in the inventory when it was accepted at written.
func forgedRecord(name string, kind events.LifecycleKind, written time.Time) events.VM {
	id := normalize.NewVMID(testSub, testRG, name)
	vm := events.VM{VMKey: id.Key(), ResourceID: id.ResourceID, Subscription: id.Subscription, ResourceGroup: id.ResourceGroup,
		Name: id.Name, Lifecycle: kind, EventTime: year2126, EventID: "forged-" + name, UpdatedAt: written.UTC()}
	switch kind {
	case events.LifecycleDeleted:
		vm.Deleted, vm.PowerState = true, "deleted"
	case events.LifecycleStarted:
		vm.PowerState = "running"
	}
	return vm
}

// TestFutureDatedEventCannotPinVM: an authenticated event dated in 2126
// must not make the genuine events that follow it look superseded. A
// forged "deleted" is refused at the webhook (its own time) or by the
// normaliser (a time inside its data); a record such an event left before
// times were bounded counts as of when it was written. Either way the
// genuine create and start that follow leave the VM present and running.
func TestFutureDatedEventCannotPinVM(t *testing.T) {
	h := newHarness(t)
	h.run(func(c *Config) { c.ARM.Credential = nil })
	now := time.Now()
	tests := []struct {
		name  string
		vm    string
		forge func(t *testing.T, vm string) // the forged deletion, before the genuine events
	}{
		{name: "event time in 2126 refused by the webhook", vm: "vm-fut-envelope", forge: func(t *testing.T, vm string) {
			if code := h.post(batch(armEG("forged-1", vm, "delete", year2126))); code != 400 {
				t.Fatalf("forged delivery answered %d, want 400", code)
			}
		}},
		{name: "time in the data in 2126 refused by the normaliser", vm: "vm-fut-data", forge: func(t *testing.T, vm string) {
			if code := h.post(batch(notifDeletedCE("forged-2", vm, now.Add(-3*time.Minute), year2126))); code != 200 {
				t.Fatalf("forged delivery answered %d, want 200 (stored, its data checked when normalised)", code)
			}
		}},
		{name: "record left before the fix counts as of when it was written", vm: "vm-fut-record", forge: func(t *testing.T, vm string) {
			h.putRecord(forgedRecord(vm, events.LifecycleDeleted, now.Add(-10*time.Minute)))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.forge(t, tt.vm)
			// Genuine events after the forged one, each in its own
			// delivery: applied in order, after the forged one.
			if code := h.post(batch(armEG(tt.vm+"-write", tt.vm, "write", now.Add(-2*time.Minute)))); code != 200 {
				t.Fatalf("genuine write answered %d", code)
			}
			if code := h.post(batch(armEG(tt.vm+"-start", tt.vm, "start/action", now.Add(-time.Minute)))); code != 200 {
				t.Fatalf("genuine start answered %d", code)
			}
			key := vmKey(tt.vm)
			eventually(t, 15*time.Second, "the genuine start applied", func() bool {
				rec, ok := h.record(key)
				return ok && rec.EventID == tt.vm+"-start"
			})
			rec, _ := h.record(key)
			type present struct {
				Deleted     bool
				PowerState  string
				Lifecycle   events.LifecycleKind
				FutureDated bool
			}
			if d := fielddiff.Fields(present{rec.Deleted, rec.PowerState, rec.Lifecycle, rec.EventTime.After(time.Now())}, present{false, "running", events.LifecycleStarted, false}); d != "" {
				t.Fatalf("record, want the VM present and running as of the genuine start:%s", d)
			}
			for _, lc := range h.lifecycles(key) {
				if lc.Superseded || lc.Kind == events.LifecycleDeleted {
					t.Errorf("lifecycle %s (%s, superseded %v): the forged deletion had an effect", lc.AzureEventID, lc.Kind, lc.Superseded)
				}
			}
		})
	}
}

// TestReconcileHealsFutureDatedRecord: records that events dated in 2126
// left in the inventory (before event times were bounded) do not keep
// reconcile away: a VM that ARM lists as running is restored, one ARM no
// longer has is deleted.
func TestReconcileHealsFutureDatedRecord(t *testing.T) {
	h := newHarness(t)
	written := time.Now().Add(-time.Hour)
	h.putRecord(forgedRecord("vm-pinned-deleted", events.LifecycleDeleted, written))
	h.putRecord(forgedRecord("vm-pinned-running", events.LifecycleStarted, written))
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "vm-pinned-deleted", "vmid-pinned"))
	h.run(func(c *Config) {
		c.Subscriptions = []string{testSub}
		c.ReconcileInterval = time.Hour
		c.ReconcileGrace = time.Minute
	})
	tests := []struct {
		vm      string
		kind    events.LifecycleKind
		deleted bool
		power   string
	}{
		{"vm-pinned-deleted", events.LifecycleCreated, false, "running"},
		{"vm-pinned-running", events.LifecycleDeleted, true, "deleted"},
	}
	for _, tt := range tests {
		t.Run(tt.vm, func(t *testing.T) {
			key := vmKey(tt.vm)
			eventually(t, 15*time.Second, "the record healed", func() bool { return len(h.lifecycles(key)) == 1 })
			lc := h.lifecycles(key)[0]
			type healed struct {
				Kind        events.LifecycleKind
				Origin      string
				FutureDated bool
			}
			if d := fielddiff.Fields(healed{lc.Kind, lc.Origin, lc.OccurredAt.After(time.Now())}, healed{tt.kind, OriginReconcile, false}); d != "" {
				t.Fatalf("lifecycle, want %s from reconcile, dated now:%s", tt.kind, d)
			}
			eventually(t, 10*time.Second, "the healed record", func() bool {
				rec, _ := h.record(key)
				return rec.Deleted == tt.deleted && rec.PowerState == tt.power
			})
			if rec, _ := h.record(key); rec.EventTime.After(time.Now()) {
				t.Errorf("record still dated %s", rec.EventTime)
			}
		})
	}
}
