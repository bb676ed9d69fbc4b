package ingest

import (
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"

	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// TestTagsFromEnrichmentThenReconcile: enrichment records a VM's Azure
// tags, bounded as Azure bounds them (an over-long name dropped, an
// over-long value trimmed; the VM is enriched all the same); a tag change
// no event reported is recorded by the next reconcile from ARM's list,
// without a read of the VM and without a lifecycle event.
func TestTagsFromEnrichmentThenReconcile(t *testing.T) {
	h := newHarness(t)
	tagged := func(tags map[string]string) {
		vm := armfake.CompliantVM(testSub, testRG, "vm-tags", "vmid-tags")
		vm.Tags = map[string]*string{}
		for k, v := range tags {
			vm.Tags[k] = to.Ptr(v)
		}
		h.arm.PutVM(vm)
	}
	longName, longValue := strings.Repeat("n", normalize.MaxTagNameLen+1), strings.Repeat("v", normalize.MaxTagValueLen+1)
	tagged(map[string]string{"env": "prod", "team": "payments", "note": longValue, longName: "x"})
	h.run(nil)
	if code := h.post(batch(armEG("tag-1", "vm-tags", "write", time.Now().Add(-time.Minute)))); code != 200 {
		t.Fatal(code)
	}
	key := vmKey("vm-tags")
	eventually(t, 15*time.Second, "enriched record", func() bool { r, _ := h.record(key); return !r.EnrichedAt.IsZero() })
	rec, _ := h.record(key)
	want := map[string]string{"env": "prod", "team": "payments", "note": longValue[:normalize.MaxTagValueLen]}
	if !maps.Equal(rec.Tags, want) {
		t.Fatalf("tags after enrichment %v, want %v", rec.Tags, want)
	}
	if rec.TagsAt.IsZero() || rec.TagsAt.After(rec.EnrichedAt) {
		t.Errorf("tags_at %s, enriched_at %s: want the read's start", rec.TagsAt, rec.EnrichedAt)
	}
	h.stop()

	// Retagged in Azure; the event never reaches Vigil.
	tagged(map[string]string{"env": "staging", "team": "platform"})
	gets := h.arm.Gets(vmResourceID("vm-tags"))
	h.run(func(c *Config) {
		c.Subscriptions = []string{testSub}
		c.ReconcileInterval = time.Hour
		c.ReconcileGrace = time.Millisecond
	})
	want = map[string]string{"env": "staging", "team": "platform"}
	eventually(t, 15*time.Second, "tags from the reconcile list", func() bool { r, _ := h.record(key); return maps.Equal(r.Tags, want) })
	if n := h.arm.Gets(vmResourceID("vm-tags")); n != gets {
		t.Errorf("%d reads of the VM, want %d: the tags come from the list", n, gets)
	}
	if n := len(h.lifecycles(key)); n != 1 {
		t.Errorf("%d lifecycle events, want 1: a tag change is no lifecycle change", n)
	}
}
