package ingest

import (
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
)

// TestFindingAlertsFireAndResolve: a configuration finding raises a
// firing alert keyed by the VM and the finding; once fixed, its resolve
// follows with the same key.
func TestFindingAlertsFireAndResolve(t *testing.T) {
	h := newHarness(t)
	bad := armfake.CompliantVM(testSub, testRG, "cvm-f", "5c2d0f4e-0c0a-4d4e-9a52-0f5f1c3e7a10")
	bad.Properties.SecurityProfile.UefiSettings.SecureBootEnabled = new(bool)
	h.arm.PutVM(bad)
	h.arm.PutNIC(armfake.NIC("/subscriptions/"+testSub+"/resourceGroups/"+testRG+"/providers/Microsoft.Network/networkInterfaces/cvm-f-nic", false))
	h.run(nil)
	key := vmKey("cvm-f")
	alerts := func() []events.Alert {
		var out []events.Alert
		for _, env := range h.envelopes(events.StreamAlerts, "vigil.alert.*."+key) {
			var a events.Alert
			if err := env.Decode(events.TypeAlert, &a); err != nil {
				t.Fatal(err)
			}
			out = append(out, a)
		}
		return out
	}
	t0 := time.Now().Add(-time.Minute).UTC()
	if code := h.post(batch(armEG("f-1", "cvm-f", "write", t0))); code != 200 {
		t.Fatalf("status %d", code)
	}
	eventually(t, 10*time.Second, "a firing finding alert", func() bool { return len(alerts()) > 0 })
	fired := alerts()[0]
	if fired.State != events.AlertFiring || fired.Key != events.AlertKey(key, fired.Code) || fired.VMKey != key {
		t.Fatalf("finding alert %+v", fired)
	}
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "cvm-f", "5c2d0f4e-0c0a-4d4e-9a52-0f5f1c3e7a10"))
	if code := h.post(batch(armEG("f-2", "cvm-f", "write", time.Now().UTC()))); code != 200 {
		t.Fatalf("status %d", code)
	}
	eventually(t, 10*time.Second, "the finding's resolve", func() bool {
		for _, a := range alerts() {
			if a.State == events.AlertResolved && a.Key == fired.Key && a.Code == "config.fixed" {
				return true
			}
		}
		return false
	})
}
