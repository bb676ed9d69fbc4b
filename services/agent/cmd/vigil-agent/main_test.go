package main

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/svcmain"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-challenge-timeout", "soon"},
		{"-challenge-timeout", "-1s"},
		{"extra"},
		{"-log-level", "loud"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-agent", args, io.Discard, defineServe); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
	for _, args := range [][]string{
		{},
		{"a", "b"},
		{"bad.name"},
		{"-timeout", "0s", "disk-key"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-agent release", args, io.Discard, defineRelease(io.Discard)); code != 2 {
			t.Errorf("release %q: exit %d, want 2 (usage)", args, code)
		}
	}
}

// Threat: the agent's NATS credentials in a file other users of the VM can
// read: they could answer challenges and ask for keys as this VM. Defence:
// both commands refuse the file before connecting, naming it, its mode and
// the fix.
func TestCredentialsReadableByOthersRefused(t *testing.T) {
	creds := filepath.Join(t.TempDir(), "agent.creds")
	if err := os.WriteFile(creds, []byte("credentials\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(creds, 0o644); err != nil {
		t.Fatal(err)
	}
	common := []string{"-nats-url", "nats://127.0.0.1:1", "-nats-creds", creds,
		"-resource-id", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "-vm-id", "00000000-0000-0000-0000-000000000001"}
	cases := []struct {
		name   string
		args   []string
		define func(*svcmain.Flags) svcmain.RunFunc
	}{
		{"vigil-agent", append([]string{"-http", ""}, common...), defineServe},
		{"vigil-agent release", append(common, "disk-key"), defineRelease(io.Discard)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			code := svcmain.Run(context.Background(), tc.name, tc.args, &stderr, tc.define)
			if code == 0 || !strings.Contains(stderr.String(), creds) || !strings.Contains(stderr.String(), "chmod 600") {
				t.Fatalf("exit %d, stderr %q: want a refusal of %s with the fix", code, stderr.String(), creds)
			}
		})
	}
}

// A symbolic link at -out is refused before anything is asked of keyguard,
// and the file it points to is left alone.
func TestReleaseOutSymlinkRefused(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(target, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "secret")
	if err := os.Symlink(target, out); err != nil {
		t.Fatal(err)
	}
	args := []string{"-nats-url", "nats://127.0.0.1:1", "-out", out,
		"-resource-id", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "disk-key"}
	var stderr strings.Builder
	if code := svcmain.Run(context.Background(), "vigil-agent release", args, &stderr, defineRelease(io.Discard)); code != 2 || !strings.Contains(stderr.String(), "symbolic link") {
		t.Fatalf("exit %d (%s), want 2 refusing the symbolic link", code, stderr.String())
	}
	if b, _ := os.ReadFile(target); string(b) != "untouched" {
		t.Fatalf("the link's target now holds %q", b)
	}
}
