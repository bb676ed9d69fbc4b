package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/auditor"
)

// auditLog runs a real auditor over a few VM events (41) and returns the log
// directory, the public key file and the VMs' resource IDs. With lost > 0,
// the first lost events leave VIGIL_EVENTS (by a limit set on the stream)
// before the auditor starts, so the log begins with a gap entry.
func auditLog(t *testing.T, lost int) (logDir, pub string, vms []string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	logDir, skey, pub := filepath.Join(dir, "log"), filepath.Join(dir, "signer.key"), filepath.Join(dir, "signer.pub")
	if _, _, err := runVigil(ctx, "audit", "keygen", "--signer", skey, "--pub", pub, "--origin", "test.vigil/audit"); err != nil {
		t.Fatalf("keygen: %v", err)
	}
	vms = []string{
		"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/alpha",
		"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/beta",
	}
	for i := range 40 {
		vm := events.VMKey(vms[i%2])
		publish(t, js, events.StateSubject(vm), events.TypeState, events.State{VMKey: vm, From: events.StatusPending, To: events.StatusTrusted})
	}
	publish(t, js, events.PolicySubject("default", "test"), events.TypePolicy, events.Policy{Name: "default", Version: 2})
	entries := 41
	if lost > 0 {
		s, err := js.Stream(ctx, events.StreamEvents)
		if err != nil {
			t.Fatal(err)
		}
		cfg := s.CachedInfo().Config
		cfg.MaxMsgs = int64(41 - lost)
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
		entries = 41 - lost + 1
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- auditor.Run(runCtx, auditor.Config{LogDir: logDir, SignerKeyFile: skey, VerifierKeyFile: pub, Options: service.Options{NATS: bus.Config{URL: nc.ConnectedUrl()}, Provision: true}, CheckpointInterval: 100 * time.Millisecond})
	}()
	for !strings.Contains(readFile(t, filepath.Join(logDir, "checkpoint")), fmt.Sprintf("\n%d\n", entries)) {
		select {
		case err := <-done:
			t.Fatalf("auditor: %v", err)
		case <-ctx.Done():
			t.Fatal("no checkpoint covering every event")
		case <-time.After(20 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	return logDir, pub, vms
}

func readFile(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return string(b)
}

func TestAuditCommands(t *testing.T) {
	ctx := context.Background()
	logDir, pub, vms := auditLog(t, 0)
	dir := t.TempDir()
	trusted := filepath.Join(dir, "trusted.checkpoint")
	if err := os.WriteFile(trusted, []byte(readFile(t, filepath.Join(logDir, "checkpoint"))), 0o644); err != nil {
		t.Fatal(err)
	}

	out, _, err := runVigil(ctx, "audit", "verify", "--log", logDir, "--key", pub, "--trusted", trusted)
	if err != nil || !strings.HasPrefix(out, "OK: log test.vigil/audit: 41 entries") || !strings.Contains(out, "sequences 1..41 each exactly once") {
		t.Fatalf("verify: %v\n%s", err, out)
	}

	// A VM's history, by resource ID or VM key, verified.
	out, stderr, err := runVigil(ctx, "audit", "search", "--log", logDir, "--vm", vms[0], "--key", pub)
	if err != nil || strings.Count(out, "io.vigil.vm.state.v1") != 20 || !strings.Contains(out, "from=pending to=trusted") || !strings.Contains(stderr, "verified") {
		t.Fatalf("search: %v\n%s\n%s", err, out, stderr)
	}
	out, _, err = runVigil(ctx, "audit", "search", "--log", logDir, "--vm", events.VMKey(vms[1]), "--json")
	if err != nil || strings.Count(out, "\n") != 20 {
		t.Fatalf("search --json: %v\n%s", err, out)
	}
	out, _, err = runVigil(ctx, "audit", "search", "--log", logDir, "--type", "policy")
	if err != nil || strings.Count(out, "io.vigil.policy.v1") != 1 {
		t.Fatalf("search --type: %v\n%s", err, out)
	}

	// A proof for entry 5 verifies, and fails for a changed entry.
	proof := filepath.Join(dir, "e5.tlog-proof")
	if _, _, err := runVigil(ctx, "audit", "prove", "--log", logDir, "--index", "5", "--out", proof); err != nil {
		t.Fatalf("prove: %v", err)
	}
	if !strings.HasPrefix(readFile(t, proof), "c2sp.org/tlog-proof@v1\nextra ") {
		t.Fatalf("proof format:\n%s", readFile(t, proof))
	}
	out, _, err = runVigil(ctx, "audit", "check-proof", "--proof", proof, "--key", pub)
	if err != nil || !strings.HasPrefix(out, "OK: entry 5 is in log test.vigil/audit (checkpoint size 41)") {
		t.Fatalf("check-proof: %v\n%s", err, out)
	}
	entry := filepath.Join(dir, "entry")
	p, _, _ := runVigil(ctx, "audit", "prove", "--log", logDir, "--index", "5")
	lines := strings.Split(p, "\n")
	_, _, err = runVigil(ctx, "audit", "check-proof", "--proof", proof, "--key", pub, "--entry", entry)
	if exitCode(err) != 2 {
		t.Fatalf("missing entry file: %v", err)
	}
	changed := strings.Replace(out[strings.Index(out, "\n{")+1:], `"to":"trusted"`, `"to":"untrusted"`, 1)
	if err := os.WriteFile(entry, []byte(strings.TrimSpace(changed)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runVigil(ctx, "audit", "check-proof", "--proof", proof, "--key", pub, "--entry", entry); exitCode(err) != 1 {
		t.Fatalf("changed entry: %v", err)
	}
	lines[1] = "extra " + strings.Repeat("A", 40)
	tampered := filepath.Join(dir, "tampered.tlog-proof")
	if err := os.WriteFile(tampered, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runVigil(ctx, "audit", "check-proof", "--proof", tampered, "--key", pub); exitCode(err) != 1 {
		t.Fatalf("changed extra: %v", err)
	}

	// A flipped byte in a tile fails verification with exit code 1.
	tile := filepath.Join(logDir, "tile/0/000.p/41")
	b := []byte(readFile(t, tile))
	b[100] ^= 0x40
	if err := os.WriteFile(tile, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runVigil(ctx, "audit", "verify", "--log", logDir, "--key", pub); exitCode(err) != 1 || !strings.Contains(err.Error(), "tile") {
		t.Fatalf("verify of a tampered log: %v", err)
	}
	if _, _, err := runVigil(ctx, "audit", "search", "--log", logDir, "--key", pub); err != nil {
		t.Fatalf("search reads entries, not tiles: %v", err)
	}
}

// TestAuditVerifyFailsOnGaps: events that left VIGIL_EVENTS before the
// auditor logged them are gap entries; a verifier must not take such a log
// for a complete one. verify lists them and exits 1 unless --allow-gaps.
func TestAuditVerifyFailsOnGaps(t *testing.T) {
	ctx := context.Background()
	logDir, pub, _ := auditLog(t, 5)
	for _, tc := range []struct {
		name   string
		flags  []string
		code   int
		stdout string // prefix
		err    string // in the error (exit 1) or the warning on stderr
	}{
		{"refused", nil, 1, "GAPS: log test.vigil/audit: 37 entries", "1 gap entries: 5 VIGIL_EVENTS sequences left the stream before the auditor logged them (deleted, purged, expired or dropped by a limit): 1..5 (entry 0); pass --allow-gaps"},
		{"allowed", []string{"--allow-gaps"}, 0, "OK: log test.vigil/audit: 37 entries", "WARNING: the log has 1 gap entries"},
		{"refused as JSON", []string{"--json"}, 1, `{"origin":"test.vigil/audit"`, "1..5 (entry 0)"},
		{"allowed as JSON", []string{"--json", "--allow-gaps"}, 0, `{"origin":"test.vigil/audit"`, "WARNING"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := runVigil(ctx, append([]string{"audit", "verify", "--log", logDir, "--key", pub}, tc.flags...)...)
			if exitCode(err) != tc.code {
				t.Fatalf("exit %d (%v), want %d\n%s", exitCode(err), err, tc.code, out)
			}
			if !strings.HasPrefix(out, tc.stdout) {
				t.Errorf("stdout %q, want it to start with %q", out, tc.stdout)
			}
			msg := stderr
			if err != nil {
				msg = err.Error()
			}
			if !strings.Contains(msg, tc.err) {
				t.Errorf("%q, want it to say %q", msg, tc.err)
			}
		})
	}
}

func TestAuditUsage(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, args := range [][]string{
		{"audit", "verify", "--log", dir},
		{"audit", "verify", "--key", "x"},
		{"audit", "verify", "--log", dir, "--key", filepath.Join(dir, "missing.pub")},
		{"audit", "prove", "--log", dir},
		{"audit", "check-proof", "--key", "x"},
		{"audit", "search", "--log", dir, "--vm", "not a vm"},
		{"audit", "keygen", "--origin", "bad name", "--signer", filepath.Join(dir, "k"), "--pub", filepath.Join(dir, "p")},
	} {
		if _, _, err := runVigil(ctx, args...); exitCode(err) != 2 {
			t.Errorf("%v: %v, want exit 2", args, err)
		}
	}
	k, p := filepath.Join(dir, "k"), filepath.Join(dir, "p")
	out, _, err := runVigil(ctx, "audit", "keygen", "--signer", k, "--pub", p)
	if err != nil || !strings.Contains(out, "vigil.local/audit+") {
		t.Fatalf("keygen: %v %s", err, out)
	}
	if _, _, err := runVigil(ctx, "audit", "keygen", "--signer", k, "--pub", p); err == nil {
		t.Fatal("keygen overwrote a key")
	}
	if st, _ := os.Stat(k); st.Mode().Perm() != 0o600 {
		t.Fatalf("signer key mode %v", st.Mode())
	}
}
