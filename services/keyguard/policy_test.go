package keyguard_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// A policy version published on the bus (vigil policy publish) governs key
// release without a restart: a VM whose evidence satisfied the configured
// version, and whose status is still trusted, no longer obtains its key
// once a version that forbids its boot is in force.
func TestReleaseFollowsPublishedPolicyVersions(t *testing.T) {
	logs := filepath.Join(t.TempDir(), "keyguard.log")
	f, err := os.Create(logs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Close() })
	h := newHarness(t, func(c *keyguard.Config) { c.Logger = slog.New(slog.NewTextHandler(f, nil)) })
	vm := h.newVM("policy-version")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	if _, err := h.release(vm, attester(vm), "disk-key"); err != nil {
		t.Fatalf("release under the configured version: %v", err)
	}

	p := forbidSimulatedBoot(h, 2)
	inForce := "policy version in force"
	if !logged(20*time.Second, logs, inForce, "policy="+p.ID, "version=2") {
		t.Errorf("no %q log line for version 2 after 20s", inForce)
	}

	_, err = h.release(vm, attester(vm), "disk-key")
	if refusal(err) != keyrelease.CodeEvidenceRejected || !strings.Contains(err.Error(), appraise.ReasonPolicyPCR) {
		t.Fatalf("release under version 2: %v, want %s with %s", err, keyrelease.CodeEvidenceRejected, appraise.ReasonPolicyPCR)
	}
	if !logged(5*time.Second, logs, "release refused", "vm="+vm.VMKey(), appraise.ReasonPolicyPCR, "version 2") {
		t.Errorf("the refusal under version 2 is not logged")
	}
	var actions []events.KeyAction
	for _, k := range h.keyEvents(vm) {
		actions = append(actions, k.Action)
	}
	if want := []events.KeyAction{events.KeyGranted, events.KeyReleased}; !slices.Equal(actions, want) {
		t.Fatalf("key events %v, want %v (one release, before version 2)", actions, want)
	}
}

// A keyguard started with an older policy than the one stored on the bus
// applies the stored version from its first release: it is ready only once
// it has read it.
func TestReleaseUnderPolicyVersionStoredBeforeStart(t *testing.T) {
	h := prepareHarness(t, natstest.Start(t))
	forbidSimulatedBoot(h, 3)
	h.start()
	vm := h.newVM("policy-stored")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	_, err := h.release(vm, attester(vm), "disk-key")
	if refusal(err) != keyrelease.CodeEvidenceRejected || !strings.Contains(err.Error(), appraise.ReasonPolicyPCR) {
		t.Fatalf("release under the stored version 3: %v, want %s with %s", err, keyrelease.CodeEvidenceRejected, appraise.ReasonPolicyPCR)
	}
}

// forbidSimulatedBoot publishes, as vigil policy publish does, a version
// of the simulator's policy that allows only another PCR 4, so that the
// simulated boot is no longer acceptable.
func forbidSimulatedBoot(h *harness, version int) *appraise.Policy {
	h.t.Helper()
	p := authority(h.t).Policy()
	p.Version = version
	p.PCRs[4] = []appraise.Hex{bytes.Repeat([]byte{0xee}, 32)}
	doc, err := p.Marshal()
	if err != nil {
		h.t.Fatal(err)
	}
	h.publish(events.PolicySubject(p.ID, "test"), events.TypePolicy, events.Policy{Name: p.ID, Version: p.Version, Document: string(doc),
		Actor: "test", Reason: "forbid the simulated boot", At: time.Now().UTC()})
	return p
}

// logged waits until one line of the log file has every part, for at most
// d.
func logged(d time.Duration, file string, parts ...string) bool {
	deadline := time.Now().Add(d)
	for {
		b, _ := os.ReadFile(file)
		for line := range strings.Lines(string(b)) {
			if !slices.ContainsFunc(parts, func(p string) bool { return !strings.Contains(line, p) }) {
				return true
			}
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}
