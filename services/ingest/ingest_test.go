package ingest

import (
	"errors"
	"fmt"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/messaging/eventgrid/aznamespaces"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/fielddiff"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/internal/nsfake"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

func TestWebhookToLifecycleJobInventoryAndFindings(t *testing.T) {
	h := newHarness(t)
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "cvm-01", "26f8bc30-774e-4290-8e7a-535f3b672aee"))
	h.arm.PutNIC(armfake.NIC("/subscriptions/"+testSub+"/resourceGroups/"+testRG+"/providers/Microsoft.Network/networkInterfaces/cvm-01-nic", false))
	h.run(nil)
	t0 := time.Now().Add(-time.Minute).UTC()
	if code := h.post(batch(armEG("ev-1", "cvm-01", "write", t0), armEG("ev-2", "cvm-01", "start/action", t0.Add(time.Second)))); code != 200 {
		t.Fatalf("status %d", code)
	}
	// 200 means stored: both raw events are on VIGIL_RAW already.
	if n := h.count(events.StreamRaw, events.SubjectRawAll); n != 2 {
		t.Fatalf("%d raw events after 200", n)
	}
	key := vmKey("cvm-01")
	eventually(t, 10*time.Second, "two lifecycle events", func() bool { return len(h.lifecycles(key)) == 2 })
	lcs := h.lifecycles(key)
	if lcs[0].Kind != events.LifecycleCreated || lcs[1].Kind != events.LifecycleStarted {
		t.Fatalf("kinds %s, %s", lcs[0].Kind, lcs[1].Kind)
	}
	type lifecycleFields struct {
		Origin, ResourceID, VMKey string
		HasAzureEventID           bool
	}
	for _, lc := range lcs {
		if d := fielddiff.Fields(lifecycleFields{lc.Origin, lc.ResourceID, lc.VMKey, lc.AzureEventID != ""}, lifecycleFields{OriginEventGrid, vmResourceID("cvm-01"), key, true}); d != "" {
			t.Errorf("%s lifecycle:%s", lc.Kind, d)
		}
	}
	envs := h.envelopes(events.StreamEvents, events.LifecycleSubject(key))
	if envs[0].ID != LifecycleID("ev-1") || envs[0].Source != "vigil-ingest/eventgrid" {
		t.Errorf("envelope id %s source %s", envs[0].ID, envs[0].Source)
	}
	// One pending attestation job (the second was absorbed).
	if n := h.count(events.StreamJobs, events.AttestJobSubject(key)); n != 1 {
		t.Errorf("%d pending jobs", n)
	}
	// Enrichment: config findings (compliant) and the inventory.
	eventually(t, 10*time.Second, "config findings", func() bool { return len(h.configs(key)) == 1 })
	cfg := h.configs(key)[0]
	type configFields struct {
		Compliant bool
		Findings  int
		VMID      string
	}
	if d := fielddiff.Fields(configFields{cfg.Compliant, len(cfg.Findings), cfg.VMID}, configFields{true, 0, "26f8bc30-774e-4290-8e7a-535f3b672aee"}); d != "" {
		t.Fatalf("config findings (%+v):%s", cfg.Findings, d)
	}
	eventually(t, 5*time.Second, "enriched record", func() bool { r, _ := h.record(key); return !r.EnrichedAt.IsZero() })
	rec, _ := h.record(key)
	type recordFields struct {
		VMID, Size, SecurityType, PowerState, Platform string
		Lifecycle                                      events.LifecycleKind
		EventTime                                      time.Time
		EventID                                        string
	}
	if d := fielddiff.Fields(
		recordFields{rec.VMID, rec.Size, rec.SecurityType, rec.PowerState, rec.Platform, rec.Lifecycle, rec.EventTime, rec.EventID},
		recordFields{"26f8bc30-774e-4290-8e7a-535f3b672aee", "Standard_DC4as_v5", "ConfidentialVM", "running", "azure-sev-snp", events.LifecycleStarted, t0.Add(time.Second), "ev-2"},
	); d != "" {
		t.Fatalf("inventory record:%s", d)
	}
}

func TestDuplicatesStoredOnce(t *testing.T) {
	h := newHarness(t)
	h.run(func(c *Config) { c.ARM.Credential = nil })
	t0 := time.Now().Add(-time.Minute)
	body := batch(armEG("dup-1", "vm-d", "write", t0), armEG("dup-2", "vm-d", "start/action", t0.Add(time.Second)))
	for range 3 {
		if code := h.post(body); code != 200 {
			t.Fatalf("status %d", code)
		}
	}
	key := vmKey("vm-d")
	eventually(t, 10*time.Second, "lifecycle events", func() bool { return len(h.lifecycles(key)) >= 2 })
	h.waitNormalized(10 * time.Second)
	if n := h.count(events.StreamRaw, events.SubjectRawAll); n != 2 {
		t.Errorf("%d raw events, want 2", n)
	}
	if n := len(h.lifecycles(key)); n != 2 {
		t.Errorf("%d lifecycle events, want 2", n)
	}
}

func TestOutOfOrderNeverRollsBack(t *testing.T) {
	h := newHarness(t)
	h.run(func(c *Config) { c.ARM.Credential = nil })
	t0 := time.Now().Add(-time.Hour)
	key := vmKey("vm-o")
	if code := h.post(batch(armEG("o-1", "vm-o", "write", t0))); code != 200 {
		t.Fatal(code)
	}
	eventually(t, 10*time.Second, "created", func() bool { return len(h.lifecycles(key)) == 1 })
	if code := h.post(batch(armEG("o-3", "vm-o", "deallocate/action", t0.Add(3*time.Minute)))); code != 200 {
		t.Fatal(code)
	}
	eventually(t, 10*time.Second, "deallocated", func() bool { return len(h.lifecycles(key)) == 2 })
	// The start happened before the deallocation but arrives after it.
	if code := h.post(batch(armEG("o-2", "vm-o", "start/action", t0.Add(2*time.Minute)))); code != 200 {
		t.Fatal(code)
	}
	h.waitNormalized(10 * time.Second)
	// The older start is on record, marked superseded, and changed nothing.
	type onRecord struct {
		AzureEventID string
		Superseded   bool
	}
	var got []onRecord
	for _, lc := range h.lifecycles(key) {
		got = append(got, onRecord{lc.AzureEventID, lc.Superseded})
	}
	if want := []onRecord{{"o-1", false}, {"o-3", false}, {"o-2", true}}; !slices.Equal(got, want) {
		t.Fatalf("lifecycle events %+v, want %+v: the late start last and marked superseded", got, want)
	}
	if n := h.count(events.StreamJobs, events.AttestJobSubject(key)); n > 1 {
		t.Fatalf("%d jobs: the superseded start enqueued one", n)
	}
	rec, _ := h.record(key)
	type state struct {
		PowerState string
		Lifecycle  events.LifecycleKind
		EventID    string
	}
	if d := fielddiff.Fields(state{rec.PowerState, rec.Lifecycle, rec.EventID}, state{"deallocated", events.LifecycleDeallocated, "o-3"}); d != "" {
		t.Fatalf("record rolled back:%s", d)
	}
}

func TestEveryLifecycleKind(t *testing.T) {
	h := newHarness(t)
	h.run(func(c *Config) { c.ARM.Credential = nil })
	t0 := time.Now().Add(-time.Hour)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	body := batch(
		armEG("k-1", "vm-k", "write", at(1)),
		armEG("k-2", "vm-k", "write", at(2)),
		armEG("k-3", "vm-k", "powerOff/action", at(3)),
		armEG("k-4", "vm-k", "start/action", at(4)),
		armEG("k-5", "vm-k", "restart/action", at(5)),
		healthCE("k-6", "vm-k", "Unavailable", at(6)),
		healthCE("k-7", "vm-k", "Available", at(7)),
		armEG("k-8", "vm-k", "deallocate/action", at(8)),
		armEG("k-9", "vm-k", "delete", at(9)),
	)
	// One event per request keeps the order of arrival.
	for _, ev := range strings.Split(strings.Trim(body, "[]"), ",{\"s") {
		if !strings.HasPrefix(ev, "{") {
			ev = "{\"s" + ev
		}
		if code := h.post("[" + ev + "]"); code != 200 {
			t.Fatalf("status %d for %s", code, ev[:60])
		}
	}
	key := vmKey("vm-k")
	want := []events.LifecycleKind{events.LifecycleCreated, events.LifecycleUpdated, events.LifecycleStopped, events.LifecycleStarted,
		events.LifecycleRestarted, events.LifecycleUnavailable, events.LifecycleAvailable, events.LifecycleDeallocated, events.LifecycleDeleted}
	eventually(t, 15*time.Second, "nine lifecycle events", func() bool { return len(h.lifecycles(key)) == len(want) })
	var got []events.LifecycleKind
	for _, lc := range h.lifecycles(key) {
		got = append(got, lc.Kind)
	}
	slices.SortFunc(got, func(a, b events.LifecycleKind) int { return slices.Index(want, a) - slices.Index(want, b) })
	if !slices.Equal(got, want) {
		t.Fatalf("kinds %v, want %v", got, want)
	}
	rec, _ := h.record(key)
	type deleted struct {
		Deleted   bool
		Lifecycle events.LifecycleKind
	}
	if d := fielddiff.Fields(deleted{rec.Deleted, rec.Lifecycle}, deleted{true, events.LifecycleDeleted}); d != "" {
		t.Fatalf("record after the deletion:%s", d)
	}
}

func TestBurstForOneVMMakesOneARMCall(t *testing.T) {
	h := newHarness(t)
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "vm-b", "vmid-b"))
	h.run(func(c *Config) { c.Enrichment.Debounce = time.Second })
	t0 := time.Now().Add(-time.Minute)
	var evs []string
	evs = append(evs, armEG("b-0", "vm-b", "write", t0))
	for i := 1; i < 40; i++ {
		evs = append(evs, armEG(fmt.Sprintf("b-%d", i), "vm-b", "extensions/write", t0.Add(time.Duration(i)*time.Millisecond)))
	}
	if code := h.post(batch(evs...)); code != 200 {
		t.Fatal(code)
	}
	key := vmKey("vm-b")
	eventually(t, 15*time.Second, "enrichment", func() bool { r, _ := h.record(key); return !r.EnrichedAt.IsZero() })
	// Every event of the burst has asked for enrichment by now; a read they
	// failed to coalesce into the first would start within the debounce
	// (1 s) after the last of them. The enricher's queue is not observable
	// from here and it takes no clock, so the test lets that time pass.
	h.waitNormalized(10 * time.Second)
	time.Sleep(1500 * time.Millisecond)
	if n := h.arm.Gets(vmResourceID("vm-b")); n != 1 {
		t.Fatalf("%d ARM reads for a burst of 40 events", n)
	}
}

func TestARMNotFoundHealsDelete(t *testing.T) {
	h := newHarness(t)
	h.run(nil)
	if code := h.post(batch(armEG("g-1", "vm-gone", "write", time.Now().Add(-time.Minute)))); code != 200 {
		t.Fatal(code)
	}
	key := vmKey("vm-gone")
	eventually(t, 15*time.Second, "deleted after ARM 404", func() bool {
		lcs := h.lifecycles(key)
		return len(lcs) == 2 && lcs[1].Kind == events.LifecycleDeleted
	})
	lc := h.lifecycles(key)[1]
	if lc.Origin != OriginReconcile || !strings.Contains(lc.Operation, "not_found") {
		t.Fatalf("deletion from origin %q, operation %q: want %q, an ARM not_found operation", lc.Origin, lc.Operation, OriginReconcile)
	}
	if envs := h.envelopes(events.StreamEvents, events.LifecycleSubject(key)); envs[1].Source != "vigil-ingest/reconcile" {
		t.Errorf("source %s", envs[1].Source)
	}
	if h.arm.Gets(vmResourceID("vm-gone")) != 2 {
		t.Errorf("404 confirmed with %d reads, want 2", h.arm.Gets(vmResourceID("vm-gone")))
	}
}

func TestARMThrottledRetriesAndNeverBlocksLifecycle(t *testing.T) {
	h := newHarness(t)
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "vm-t", "vmid-t"))
	h.arm.Throttle(1, "1")
	h.run(nil)
	start := time.Now()
	if code := h.post(batch(armEG("t-1", "vm-t", "write", time.Now().Add(-time.Minute)))); code != 200 {
		t.Fatal(code)
	}
	key := vmKey("vm-t")
	eventually(t, 5*time.Second, "lifecycle while ARM throttles", func() bool { return len(h.lifecycles(key)) == 1 })
	eventually(t, 15*time.Second, "config after Retry-After", func() bool { return len(h.configs(key)) == 1 })
	if took := time.Since(start); took < time.Second {
		t.Errorf("enriched after %s, before the Retry-After of 1 s", took)
	}
	if n := h.arm.Gets(vmResourceID("vm-t")); n != 2 {
		t.Errorf("%d reads, want 2 (throttled, then after Retry-After)", n)
	}
}

func TestReconcileHealsMissedCreateAndDelete(t *testing.T) {
	h := newHarness(t)
	// First run without ARM: an event creates vm-gone; vm-missed exists in
	// Azure but its events never arrive.
	h.run(func(c *Config) { c.ARM.Credential = nil })
	if code := h.post(batch(armEG("r-1", "vm-gone", "write", time.Now().Add(-time.Hour)))); code != 200 {
		t.Fatal(code)
	}
	gone, missed := vmKey("vm-gone"), vmKey("vm-missed")
	eventually(t, 10*time.Second, "vm-gone in the inventory", func() bool { _, ok := h.record(gone); return ok })
	h.stop()
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "vm-missed", "vmid-missed"))
	// vm-new was created a moment ago: its own event is still on its way,
	// so reconcile leaves it alone (the event carries the delivery's trace).
	fresh := armfake.CompliantVM(testSub, testRG, "vm-new", "vmid-new")
	fresh.Properties.TimeCreated = to.Ptr(time.Now())
	h.arm.PutVM(fresh)
	h.run(func(c *Config) {
		c.Subscriptions = []string{testSub}
		c.ReconcileInterval = time.Hour
		c.ReconcileGrace = time.Minute
	})
	eventually(t, 15*time.Second, "healed create", func() bool { return len(h.lifecycles(missed)) == 1 })
	eventually(t, 15*time.Second, "healed delete", func() bool { return len(h.lifecycles(gone)) == 2 })
	created, deleted := h.lifecycles(missed)[0], h.lifecycles(gone)[1]
	type healed struct {
		Kind         events.LifecycleKind
		Origin, VMID string
	}
	if d := fielddiff.Fields(healed{created.Kind, created.Origin, created.VMID}, healed{events.LifecycleCreated, OriginReconcile, "vmid-missed"}); d != "" {
		t.Errorf("healed create:%s", d)
	}
	if d := fielddiff.Fields(healed{deleted.Kind, deleted.Origin, ""}, healed{events.LifecycleDeleted, OriginReconcile, ""}); d != "" {
		t.Errorf("healed delete:%s", d)
	}
	for _, key := range []string{missed, gone} {
		envs := h.envelopes(events.StreamEvents, events.LifecycleSubject(key))
		if src := envs[len(envs)-1].Source; src != "vigil-ingest/reconcile" {
			t.Errorf("source %s", src)
		}
	}
	if n := h.count(events.StreamJobs, events.AttestJobSubject(missed)); n != 1 {
		t.Errorf("%d jobs for the healed create", n)
	}
	eventually(t, 10*time.Second, "healed VM enriched", func() bool { return len(h.configs(missed)) == 1 })
	if n := len(h.lifecycles(vmKey("vm-new"))); n != 0 {
		t.Errorf("reconcile published %d lifecycle events for a VM created within the grace period", n)
	}
}

func TestStorageUnavailableAnswers503(t *testing.T) {
	h := newHarness(t)
	h.run(func(c *Config) { c.ARM.Credential = nil; c.StoreTimeout = time.Second })
	h.nats.Stop()
	if code := h.post(batch(armEG("s-1", "vm-s", "write", time.Now()))); code != http.StatusServiceUnavailable {
		t.Fatalf("status %d with NATS down", code)
	}
	h.nats.Restart()
	eventually(t, 15*time.Second, "accepted after NATS is back", func() bool {
		return h.post(batch(armEG("s-1", "vm-s", "write", time.Now()))) == 200
	})
}

// TestKillBetweenStoreAndAnswer: ingest dies after JetStream stored the
// delivery but before Event Grid got its 200. Event Grid retries the same
// delivery to a new ingest process, which answers 200; nothing is stored
// or published twice.
func TestKillBetweenStoreAndAnswer(t *testing.T) {
	h := newHarness(t)
	var once sync.Once
	killed := make(chan struct{})
	h.hooks.afterStore = func(*http.Request) {
		once.Do(func() {
			close(killed)
			panic(http.ErrAbortHandler) // the connection drops, no answer
		})
	}
	h.run(func(c *Config) { c.ARM.Credential = nil })
	t0 := time.Now().Add(-time.Minute)
	body := batch(armEG("kill-1", "vm-x", "write", t0), armEG("kill-2", "vm-x", "start/action", t0.Add(time.Second)),
		healthCE("kill-3", "vm-x", "Available", t0.Add(2*time.Second)))
	resp, err := http.Post(h.url, "application/json", strings.NewReader(body))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("the sender got an answer (%d) from a dead ingest", resp.StatusCode)
	}
	<-killed
	h.stop()
	// The delivery was stored before the crash.
	if n := h.count(events.StreamRaw, events.SubjectRawAll); n != 3 {
		t.Fatalf("%d raw events stored before the crash", n)
	}
	// A new process; the sender retries the same delivery.
	h.run(func(c *Config) { c.ARM.Credential = nil })
	if code := h.post(body); code != 200 {
		t.Fatalf("retry answered %d", code)
	}
	key := vmKey("vm-x")
	// Raw events the first process had taken but not finished come back
	// after the consumer's AckWait (60 s) at the latest, as after a real kill.
	eventually(t, 75*time.Second, "lifecycle events", func() bool { return h.stored(events.StreamEvents, events.LifecycleSubject(key)) == 3 })
	h.waitNormalized(75 * time.Second)
	if n := h.count(events.StreamRaw, events.SubjectRawAll); n != 3 {
		t.Errorf("%d raw events after the retry, want 3", n)
	}
	if n := len(h.lifecycles(key)); n != 3 {
		t.Errorf("%d lifecycle events after the retry, want 3", n)
	}
}

func TestRequireWebhookAuth(t *testing.T) {
	h := newHarness(t)
	err := Run(t.Context(), Config{Options: service.Options{Conn: h.conn}, WebhookAddr: "127.0.0.1:0", RequireWebhookAuth: true})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("err = %v", err)
	}
}

func TestNamespacePullToLifecycle(t *testing.T) {
	ns := nsfake.New(t)
	at := time.Now().Add(-time.Minute).UTC().Format(time.RFC3339Nano)
	id := vmResourceID("vm-ns")
	ns.Publish(fmt.Sprintf(`{"specversion":"1.0","id":"ns-1","source":"/subscriptions/%s","type":%q,"subject":%q,"time":%q,
	"data":{"resourceUri":%q,"operationName":"Microsoft.Compute/virtualMachines/write","status":"Succeeded","authorization":{"evidence":[]}}}`,
		testSub, normalize.TypeWriteSuccess, id, at, id))
	h := newHarness(t)
	h.run(func(c *Config) {
		c.ARM.Credential = nil
		opts := &aznamespaces.ReceiverClientOptions{}
		opts.Transport = ns.Server.Client()
		c.Namespace = &namespace.Config{Endpoint: ns.Server.URL, Topic: ns.Topic, Subscription: ns.Sub, Key: nsfake.Key,
			ClientOptions: opts, MaxWait: 10 * time.Second}
	})
	key := vmKey("vm-ns")
	eventually(t, 10*time.Second, "lifecycle from the namespace", func() bool { return len(h.lifecycles(key)) == 1 })
	lc := h.lifecycles(key)[0]
	type fromNamespace struct {
		Kind                 events.LifecycleKind
		Origin, AzureEventID string
	}
	if d := fielddiff.Fields(fromNamespace{lc.Kind, lc.Origin, lc.AzureEventID}, fromNamespace{events.LifecycleCreated, OriginNamespace, "ns-1"}); d != "" {
		t.Fatalf("lifecycle:%s", d)
	}
	eventually(t, 5*time.Second, "acknowledged", func() bool { return ns.Count("acked") == 1 })
	if n := h.count(events.StreamRaw, events.RawSubject(OriginNamespace)); n != 1 {
		t.Errorf("%d raw events from the namespace", n)
	}
}
