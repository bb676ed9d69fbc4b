package ingest

import (
	"fmt"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
)

// TestVMIDFromTheReconcileList: VMs whose enrichment waits its turn within
// ARM's read budget (here one read, then none for a long while) get their
// vmId from the reconcile list, one call for all of them, so that their
// first attestation need not wait for each VM's read; their enrichment is
// still to come, and nothing else is taken from the list.
func TestVMIDFromTheReconcileList(t *testing.T) {
	h := newHarness(t)
	const vms = 5
	for i := range vms {
		h.arm.PutVM(armfake.CompliantVM(testSub, testRG, fmt.Sprintf("vm-%d", i), fmt.Sprintf("vmid-%d", i)))
	}
	// The VMs' events arrive first; then, after a restart, the reconcile
	// list, with the same budget: one read per run.
	budget := arm.EnricherConfig{PerSubscriptionRate: rate.Every(time.Hour), PerSubscriptionBurst: 1,
		Debounce: 10 * time.Millisecond, Fresh: time.Millisecond}
	h.run(func(c *Config) { c.Enrichment = budget })
	for i := range vms {
		if code := h.post(batch(armEG(fmt.Sprintf("create-%d", i), fmt.Sprintf("vm-%d", i), "write", time.Now().Add(-time.Minute)))); code != 200 {
			t.Fatal(code)
		}
	}
	for i := range vms {
		key := vmKey(fmt.Sprintf("vm-%d", i))
		eventually(t, 15*time.Second, "record of "+key, func() bool { _, ok := h.record(key); return ok })
	}
	h.stop()
	h.run(func(c *Config) {
		c.Enrichment = budget
		c.Subscriptions = []string{testSub}
		c.ReconcileInterval = 300 * time.Millisecond
		c.ReconcileGrace = time.Millisecond
	})
	for i := range vms {
		key, want := vmKey(fmt.Sprintf("vm-%d", i)), fmt.Sprintf("vmid-%d", i)
		eventually(t, 15*time.Second, "vmId of "+key, func() bool { r, _ := h.record(key); return r.VMID == want })
	}
	enriched, reads := 0, 0
	for i := range vms {
		name := fmt.Sprintf("vm-%d", i)
		r, _ := h.record(vmKey(name))
		if !r.EnrichedAt.IsZero() {
			enriched++
		} else if r.Size != "" || r.Platform != "" || len(r.Findings) > 0 {
			t.Errorf("%s: the list gave more than the vmId and tags: %+v", name, r)
		}
		reads += h.arm.Gets(vmResourceID(name))
	}
	if enriched > 2 || reads > 2 {
		t.Fatalf("%d VMs enriched with %d reads: the enrichment budget allowed one per run", enriched, reads)
	}
	if n := len(h.lifecycles(vmKey("vm-1"))); n != 1 {
		t.Errorf("%d lifecycle events, want 1: a vmId from the list is no lifecycle change", n)
	}
}

// TestBacklogListsSooner: when more VMs wait for their enrichment's read
// than the read budget serves in a few seconds (listBacklog), ingest lists
// the subscription soon (not at the next interval, an hour away here),
// so that every VM's vmId comes from one list call; a single VM waiting
// asks for nothing.
func TestBacklogListsSooner(t *testing.T) {
	h := newHarness(t)
	const gap = 500 * time.Millisecond
	h.hooks.kickGap = gap
	h.run(func(c *Config) {
		c.Enrichment = arm.EnricherConfig{PerSubscriptionRate: rate.Every(time.Hour), PerSubscriptionBurst: 1,
			Debounce: 10 * time.Millisecond, Fresh: time.Millisecond}
		c.Subscriptions = []string{testSub}
		c.ReconcileInterval = time.Hour
		c.ReconcileGrace = time.Millisecond
	})
	eventually(t, 10*time.Second, "the pass at start", func() bool { return h.arm.Lists() >= 1 })
	// One VM waiting: no early pass.
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "vm-single", "vmid-single"))
	if code := h.post(batch(armEG("create-single", "vm-single", "write", time.Now()))); code != 200 {
		t.Fatal(code)
	}
	eventually(t, 10*time.Second, "record of vm-single", func() bool { _, ok := h.record(vmKey("vm-single")); return ok })
	time.Sleep(3 * gap) // a pass it asked for would have started by now
	if n := h.arm.Lists(); n != 1 {
		t.Fatalf("%d list passes for one VM waiting; want only the one at start", n)
	}
	// A fleet arriving at once: its vmIds come from one early pass.
	const vms = listBacklog + 20
	evs := make([]string, 0, vms)
	for i := range vms {
		name := fmt.Sprintf("vm-%03d", i)
		h.arm.PutVM(armfake.CompliantVM(testSub, testRG, name, "vmid-"+name))
		evs = append(evs, armEG("create-"+name, name, "write", time.Now()))
	}
	for i := 0; i < len(evs); i += 50 {
		if code := h.post(batch(evs[i:min(i+50, len(evs))]...)); code != 200 {
			t.Fatal(code)
		}
	}
	for i := range vms {
		name := fmt.Sprintf("vm-%03d", i)
		eventually(t, 15*time.Second, "vmId of "+name, func() bool { r, _ := h.record(vmKey(name)); return r.VMID == "vmid-"+name })
	}
	if n := h.arm.Lists(); n < 2 {
		t.Fatalf("%d list passes; the backlog should have asked for one", n)
	}
}
