package keyguard_test

import (
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// massVMs is the size of a bad rollout's wave in BenchmarkMassRevocation.
const massVMs = 1000

// BenchmarkMassRevocation: a bad image rollout makes massVMs trusted VMs,
// each holding a key, contraindicated within about a second. Each
// iteration is such a wave of new VMs: their contraindicated verdicts are
// published all at once (asynchronously, each acknowledged by the stream),
// and each
// VM's time runs from its verdict's publish to keyguard's key event
// "revoked" for it, which keyguard publishes once the grant's revocation is
// written, as a subscriber sees it. Every VM's key.revoked alert must be
// published too (delivery to sinks is the notifier's,
// BenchmarkAlertDelivery). Reported:
//
//	p50-ms, p99-ms, max-ms   verdict published → grant revoked, over every wave's VMs (goal p99 < 1 s)
//	wave-publish-ms          how long publishing a wave's verdicts took
//	revocations/s            a wave's VMs over the time from its first verdict to its last revocation
//	alerts                   key.revoked alerts seen per wave (must be massVMs)
func BenchmarkMassRevocation(b *testing.B) {
	h := newHarness(b)
	ctx := ctxT(b)
	type seen struct {
		mu      sync.Mutex
		revoked map[string]time.Time // VM key -> when its revoked key event was seen
		alerted map[string]bool
		done    chan struct{} // closed once every VM of the wave is revoked and alerted
		want    map[string]bool
	}
	var cur seen
	cur.revoked, cur.alerted = map[string]time.Time{}, map[string]bool{}
	note := func(m *nats.Msg) {
		at := time.Now()
		env, err := events.Parse(m.Data)
		if err != nil {
			return
		}
		cur.mu.Lock()
		defer cur.mu.Unlock()
		switch env.Type {
		case events.TypeKey:
			var k events.Key
			if env.Decode(events.TypeKey, &k) == nil && k.Action == events.KeyRevoked && cur.want[k.VMKey] {
				if _, ok := cur.revoked[k.VMKey]; !ok {
					cur.revoked[k.VMKey] = at
				}
			}
		case events.TypeAlert:
			var a events.Alert
			if env.Decode(events.TypeAlert, &a) == nil && a.Code == "key.revoked" && cur.want[a.VMKey] {
				cur.alerted[a.VMKey] = true
			}
		}
		if cur.done != nil && len(cur.revoked) == len(cur.want) && len(cur.alerted) == len(cur.want) {
			close(cur.done)
			cur.done = nil
		}
	}
	for _, subj := range []string{events.KeySubject("*"), "vigil.alert.>"} {
		sub, err := h.conn.NC.Subscribe(subj, note)
		if err != nil {
			b.Fatal(err)
		}
		if err := sub.SetPendingLimits(-1, -1); err != nil {
			b.Fatal(err)
		}
	}

	var (
		lat                   []time.Duration
		publishTook, waveTook []time.Duration
		alerts                []int
	)
	b.ResetTimer()
	for wave := 0; wave < b.N; wave++ {
		b.StopTimer()
		vms := make([]*sim.VM, massVMs)
		want := make(map[string]bool, massVMs)
		for i := range vms {
			vms[i] = h.newVM(fmt.Sprintf("rollout-%d-%04d", wave, i))
			h.setStatus(vms[i], events.StatusTrusted)
			h.grant(vms[i], "disk-key", keyguard.BackendLocal)
			want[vms[i].VMKey()] = true
		}
		msgs := make([]*nats.Msg, massVMs)
		for i, vm := range vms {
			env, err := events.New(events.TypeVerdict, "bench", events.VerdictSubject(vm.VMKey()), events.Verdict{
				ID: events.NewID(), VMKey: vm.VMKey(), VMID: vm.VMID(), Platform: vm.Platform(), Status: events.VerdictContraindicated,
				Reasons: []events.Reason{{Code: "policy.measurement_mismatch"}}, IssuedAt: time.Now().UTC()})
			if err != nil {
				b.Fatal(err)
			}
			if msgs[i], err = bus.Msg(ctx, events.VerdictSubject(vm.VMKey()), env); err != nil {
				b.Fatal(err)
			}
		}
		done := make(chan struct{})
		cur.mu.Lock()
		cur.want, cur.done = want, done
		clear(cur.revoked)
		clear(cur.alerted)
		cur.mu.Unlock()
		b.StartTimer()

		// The whole wave at once: published asynchronously, acknowledged
		// by the stream before the wave counts as published.
		published := make(map[string]time.Time, massVMs)
		acks := make([]jetstream.PubAckFuture, massVMs)
		start := time.Now()
		for i, vm := range vms {
			published[vm.VMKey()] = time.Now()
			f, err := h.conn.JS.PublishMsgAsync(msgs[i])
			if err != nil {
				b.Fatal(err)
			}
			acks[i] = f
		}
		natstest.WaitAcks(ctx, b, acks)
		publishTook = append(publishTook, time.Since(start))
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			cur.mu.Lock()
			r, a := len(cur.revoked), len(cur.alerted)
			cur.mu.Unlock()
			b.Fatalf("wave %d: %d of %d VMs revoked and %d alerted after 60 s", wave, r, massVMs, a)
		}
		b.StopTimer()
		cur.mu.Lock()
		var last time.Time
		for vm, at := range cur.revoked {
			lat = append(lat, at.Sub(published[vm]))
			if at.After(last) {
				last = at
			}
		}
		alerts = append(alerts, len(cur.alerted))
		cur.mu.Unlock()
		waveTook = append(waveTook, last.Sub(start))
		for _, vm := range vms {
			if e := h.getGrant(vm, keyguard.BackendLocal, "disk-key"); e.State != grants.Revoked {
				b.Fatalf("%s: grant %s after its revoked key event", vm.VMKey(), e.State)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
	b.ReportMetric(ms(slices.Max(lat)), "max-ms")
	b.ReportMetric(ms(percentile(publishTook, 50)), "wave-publish-ms")
	b.ReportMetric(float64(massVMs)/percentile(waveTook, 50).Seconds(), "revocations/s")
	b.ReportMetric(float64(slices.Min(alerts)), "alerts")
}
