package attestworker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// registerUnenriched stores the VMs in the inventory as ingest does on
// their creation event, before ARM enrichment has read their vmId, and
// enqueues ingest's creation job (without a vmId either).
func (f *fleet) registerUnenriched(ctx context.Context, vms ...*testVM) {
	f.t.Helper()
	for _, v := range vms {
		now := time.Now().UTC()
		f.putInventory(ctx, events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), Lifecycle: events.LifecycleCreated, EventTime: now, UpdatedAt: now})
		if _, err := f.conn.PublishJob(ctx, "test", events.Job{VMKey: v.VMKey(), ResourceID: v.ResourceID(), Reason: "created", RequestedAt: now}); err != nil {
			f.t.Fatal(err)
		}
	}
}

// enrich writes the VM's vmId into its inventory record, as ingest does
// once ARM has described the VM.
func (f *fleet) enrich(ctx context.Context, v *testVM) {
	f.t.Helper()
	now := time.Now().UTC()
	f.putInventory(ctx, events.VM{VMKey: v.VMKey(), ResourceID: v.ResourceID(), VMID: v.VMID(), PowerState: "running",
		Lifecycle: events.LifecycleCreated, EventTime: now, EnrichedAt: now, UpdatedAt: now})
}

func (f *fleet) putInventory(ctx context.Context, rec events.VM) {
	f.t.Helper()
	kv, err := f.conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		f.t.Fatal(err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := kv.Put(ctx, rec.VMKey, b); err != nil {
		f.t.Fatal(err)
	}
}

// verdictReasons lists the reason codes of every stored verdict of v.
func verdictReasons(t *testing.T, ctx context.Context, f *fleet, v *testVM) (codes []string, verdicts []events.Verdict) {
	t.Helper()
	verdicts = verdictsOf(t, ctx, f.conn.JS, v.VMKey())
	for _, vd := range verdicts {
		for _, r := range vd.Reasons {
			codes = append(codes, r.Code)
		}
	}
	return codes, verdicts
}

// A VM created before ARM enrichment has its vmId is not attested while it
// waits (no verdict, no identity.vmid_unknown warning, status pending),
// and is attested as soon as ingest writes the vmId into the inventory:
// long before its onboarding limit, the sweep or a re-attestation interval
// would come round.
func TestFirstAttestationWaitsForTheVMID(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 2, sim.VMConfig{})
	tdx := newFleet(t, ctx, conn, 1, sim.VMConfig{Platform: evidence.PlatformAzureTDX})
	vms := append(f.vms, tdx.vms...)
	cfg := testConfig(connectBus(t, srv.URL()), "w1")
	// Only the inventory watch can attest within the deadline below: the
	// onboarding limit, the sweep and the interval are all a minute.
	cfg.OnboardingLimit = time.Minute
	cfg.SweepEvery = time.Minute
	cfg.Timing.Interval = time.Minute
	runWorker(t, cfg)
	f.registerUnenriched(ctx, vms...)

	waitFor(t, 20*time.Second, "every VM pending, waiting for its vmId", func() (bool, string) {
		for _, v := range vms {
			st, ok := statusOf(t, ctx, conn.JS, v.VMKey())
			if !ok || st.Status != events.StatusPending || !hasReason(st, ReasonAwaitingVMID) || st.AwaitingVMIDSince.IsZero() {
				return false, fmt.Sprintf("%s: %q %v", v.VMKey(), st.Status, st.Reasons)
			}
		}
		return true, ""
	})
	for _, v := range vms {
		// The record says waiting before the job that would have attested
		// is acknowledged: no challenge was sent, no verdict stored.
		if n := len(v.challenges()); n != 0 {
			t.Errorf("%s challenged %d times before its vmId was known", v.VMKey(), n)
		}
		if codes, vs := verdictReasons(t, ctx, f, v); len(vs) != 0 {
			t.Errorf("%s: %d verdicts before its vmId was known (reasons %v)", v.VMKey(), len(vs), codes)
		}
	}

	enriched := time.Now()
	for _, v := range vms {
		f.enrich(ctx, v)
	}
	const prompt = 5 * time.Second
	waitStatus(t, ctx, conn.JS, prompt, events.StatusTrusted, vms...)
	t.Logf("first verdicts trusted %s after the vmIds were written", time.Since(enriched).Round(time.Millisecond))

	for _, v := range vms {
		codes, vs := verdictReasons(t, ctx, f, v)
		if slices.Contains(codes, appraise.ReasonIdentityVMIDUnknown) {
			t.Errorf("%s: a verdict says %s: %v", v.VMKey(), appraise.ReasonIdentityVMIDUnknown, codes)
		}
		if len(vs) == 0 || vs[0].Status != events.VerdictAffirming || vs[0].VMID != v.VMID() {
			t.Errorf("%s: first verdict %+v, want affirming for vmId %s", v.VMKey(), vs, v.VMID())
		}
		st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
		if st.VMID != v.VMID() || !st.AwaitingVMIDSince.IsZero() || hasReason(st, ReasonVMIDNotReported) {
			t.Errorf("%s: status vmId %q, awaiting since %v, reasons %v; want %s, not awaiting", v.VMKey(), st.VMID, st.AwaitingVMIDSince, st.Reasons, v.VMID())
		}
		var path []events.Status
		for _, s := range statesOf(t, ctx, conn.JS, v.VMKey()) {
			path = append(path, s.From, s.To)
		}
		if !slices.Equal(path, []events.Status{events.StatusPending, events.StatusTrusted}) {
			t.Errorf("%s went through %v, want pending -> trusted", v.VMKey(), path)
		}
	}
}

// A VM whose vmId ARM never reports is not left pending: once its
// onboarding limit has passed it is attested without the vmId, the policy's
// identity.unknown_vm_id decides its verdict, and its status says that the
// vmId never came (vm.vmid_not_reported). The sweep, which runs every
// second, does not make it stale while it waits, though the wait is longer
// than the grace period. When the vmId arrives at last, the VM is attested
// again at once. A policy that does not check vmIds attests at once.
func TestVMWithoutVMIDPastTheOnboardingLimit(t *testing.T) {
	t.Parallel()
	const limit = 4 * time.Second // longer than testConfig's 3 s grace
	for _, tc := range []struct {
		name       string
		policy     func(*appraise.Policy)
		want       events.Status
		wantReason []string // in the status after the limit
		wait       bool     // the first challenge comes only at the limit
	}{
		{"unknown vmId warns", func(p *appraise.Policy) { p.Identity.UnknownVMID = appraise.Warn },
			events.StatusWarning, []string{appraise.ReasonIdentityVMIDUnknown, ReasonVMIDNotReported}, true},
		{"unknown vmId denied", func(p *appraise.Policy) { p.Identity.UnknownVMID = appraise.Deny },
			events.StatusUntrusted, []string{appraise.ReasonIdentityVMIDUnknown, ReasonVMIDNotReported}, true},
		{"unknown vmId allowed", func(p *appraise.Policy) { p.Identity.UnknownVMID = appraise.Allow },
			events.StatusTrusted, []string{ReasonVMIDNotReported}, true},
		{"vmIds not checked", func(p *appraise.Policy) { p.Identity.CheckVMID = false },
			events.StatusTrusted, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv, conn, ctx := testEnv(t)
			f := newFleet(t, ctx, conn, 1, sim.VMConfig{})
			v := f.vms[0]
			cfg := testConfig(connectBus(t, srv.URL()), "w1")
			cfg.OnboardingLimit = limit
			cfg.Timing.Interval = time.Minute // no re-attestation within the test
			pol := testAuthority().Policy()
			tc.policy(pol)
			cfg.Policy = pol
			runWorker(t, cfg)
			registered := time.Now()
			f.registerUnenriched(ctx, v)

			waitFor(t, limit+20*time.Second, fmt.Sprintf("%s with %v", tc.want, tc.wantReason), func() (bool, string) {
				st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
				ok := st.Status == tc.want
				for _, code := range tc.wantReason {
					ok = ok && hasReason(st, code)
				}
				return ok, fmt.Sprintf("%q %v", st.Status, st.Reasons)
			})
			ch := v.challenges()
			if len(ch) == 0 {
				t.Fatal("no challenge recorded")
			}
			if waited := ch[0].Sub(registered); tc.wait != (waited >= limit-500*time.Millisecond) {
				t.Errorf("first challenge %s after registration; want waiting for the %s limit: %v", waited.Round(time.Millisecond), limit, tc.wait)
			}
			var path []events.Status
			for _, s := range statesOf(t, ctx, conn.JS, v.VMKey()) {
				path = append(path, s.To)
			}
			if want := []events.Status{tc.want}; !slices.Equal(path, want) {
				t.Errorf("state changes to %v, want only to %v (never stale or unreachable while waiting)", path, want)
			}
			if !tc.wait {
				return
			}
			st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
			if st.VMID != "" || st.AwaitingVMIDSince.IsZero() {
				t.Errorf("status after the limit: vmId %q, awaiting since %v; want none, set", st.VMID, st.AwaitingVMIDSince)
			}

			// The vmId arrives late: the VM is attested at once, with it.
			f.enrich(ctx, v)
			waitFor(t, 5*time.Second, "trusted with the vmId", func() (bool, string) {
				st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
				return st.Status == events.StatusTrusted && st.VMID == v.VMID() && len(st.Reasons) == 0 && st.AwaitingVMIDSince.IsZero(),
					fmt.Sprintf("%q vmId %q %v", st.Status, st.VMID, st.Reasons)
			})
			_, vs := verdictReasons(t, ctx, f, v)
			if last := vs[len(vs)-1]; last.VMID != v.VMID() || last.Status != events.VerdictAffirming {
				t.Errorf("last verdict %s for vmId %q, want affirming for %s", last.Status, last.VMID, v.VMID())
			}
		})
	}
}
