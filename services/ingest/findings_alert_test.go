package ingest

import (
	"bytes"
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
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

// TestFindingAlertSurvivesAFailedPublish: when the alert of a finding
// cannot be published (here VIGIL_ALERTS is gone for a moment), the read
// is applied again once it can, and the alert is raised then: the
// inventory does not record the finding before its alert is out, which
// would leave the read applied again with nothing changed and the alert
// (or a resolve) lost.
func TestFindingAlertSurvivesAFailedPublish(t *testing.T) {
	h := newHarness(t)
	const vmID = "6d3e1f5a-1b1b-4e5f-8a63-1a6a2d4f8b21"
	h.arm.PutVM(armfake.CompliantVM(testSub, testRG, "cvm-p", vmID))
	h.arm.PutNIC(armfake.NIC("/subscriptions/"+testSub+"/resourceGroups/"+testRG+"/providers/Microsoft.Network/networkInterfaces/cvm-p-nic", false))
	var logs lockedBuffer
	h.run(func(c *Config) {
		c.Options.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	key := vmKey("cvm-p")
	if code := h.post(batch(armEG("p-1", "cvm-p", "write", time.Now().Add(-time.Minute).UTC()))); code != 200 {
		t.Fatalf("status %d", code)
	}
	eventually(t, 10*time.Second, "the VM enriched", func() bool { return len(h.configs(key)) > 0 })

	ctx := context.Background()
	if err := h.js.DeleteStream(ctx, events.StreamAlerts); err != nil {
		t.Fatal(err)
	}
	bad := armfake.CompliantVM(testSub, testRG, "cvm-p", vmID)
	bad.Properties.SecurityProfile.UefiSettings.SecureBootEnabled = new(bool)
	h.arm.PutVM(bad)
	if code := h.post(batch(armEG("p-2", "cvm-p", "write", time.Now().UTC()))); code != 200 {
		t.Fatalf("status %d", code)
	}
	// The read that finds secure boot off failed to apply: its alert
	// could not be published.
	eventually(t, 10*time.Second, "a failed application of the read", func() bool {
		return strings.Contains(logs.String(), "applying enrichment failed")
	})
	if err := events.Provision(ctx, h.js, events.Topology{}); err != nil {
		t.Fatal(err)
	}
	want := events.AlertKey(key, "config."+compliance.CodeSecureBoot)
	eventually(t, 15*time.Second, "the finding's alert after VIGIL_ALERTS is back", func() bool {
		for _, env := range h.envelopes(events.StreamAlerts, "vigil.alert.*."+key) {
			var a events.Alert
			if err := env.Decode(events.TypeAlert, &a); err != nil {
				t.Fatal(err)
			}
			if a.Key == want && a.State == events.AlertFiring {
				return true
			}
		}
		return false
	})
	if rec, ok := h.record(key); !ok || !slices.ContainsFunc(rec.Findings, func(f events.Finding) bool { return f.Code == compliance.CodeSecureBoot }) {
		t.Errorf("inventory %+v: no %s finding", rec, compliance.CodeSecureBoot)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent use.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
