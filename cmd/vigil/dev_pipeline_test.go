package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devview"
	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// TestDevPipeline runs the whole pipeline as `vigil dev` does, on a small
// fleet with short intervals: every healthy VM ends trusted, every tampered
// VM revoked, no healthy VM revoked, and the audit log verifies.
func TestDevPipeline(t *testing.T) {
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "dev")
	summary := filepath.Join(dir, "summary.json")
	out, stderr, err := runVigil(context.Background(), "dev",
		"--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", data, "--ops-listen", "", "--http", "127.0.0.1:0",
		"--vms", "9", "--interval", "4s", "--grace", "6s", "--tamper-after", "6s", "--duration", "30s", "--summary", summary)
	if err != nil {
		t.Fatalf("vigil dev: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	b, err := os.ReadFile(summary)
	if err != nil {
		t.Fatal(err)
	}
	var s devview.Summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(); err != nil {
		t.Fatalf("%v\nsummary: %s\nstdout:\n%s", err, b, out)
	}
	// Three VMs are spoiled, one is deleted (retired, revoked), one is
	// deallocated and started again (suspended, then trusted) and one has
	// its configuration drift and fixed (trusted throughout).
	if s.VMs != 9 || s.Attested != 9 || len(s.Tampered) != 3 || len(s.Deleted) != 1 || len(s.Revoked) != 4 || s.Statuses["trusted"] != 5 ||
		len(s.Drifted) != 1 {
		t.Fatalf("summary: %s", b)
	}
	for _, want := range []string{"tampered-measurement", "debug-enabled", "silent-agent", "revoked", "→ suspended", "→ retired", "boot diagnostics enabled", "vigil audit verify --log"} {
		if !strings.Contains(out, want) {
			t.Errorf("the live view never shows %q:\n%s", want, out)
		}
	}
	if s.Audit.Entries == 0 || s.RevocationLatencyMS.N != 4 {
		t.Errorf("audit %+v, latency %+v", s.Audit, s.RevocationLatencyMS)
	}
	vout, verr, err := runVigil(context.Background(), "audit", "verify", "--log", s.Audit.Log, "--key", s.Audit.PublicKey)
	if err != nil {
		t.Fatalf("audit verify: %v\n%s\n%s", err, vout, verr)
	}
}
