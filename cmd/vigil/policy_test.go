package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

func writePolicy(t *testing.T, version int) string {
	t.Helper()
	p := appraise.DefaultPolicy()
	p.Version = version
	doc, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(path, doc, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestPolicyPublishAndShow(t *testing.T) {
	srv := natstest.Start(t)
	srv.JetStream()
	ctx := context.Background()
	server := []string{"--nats-url", srv.URL()}
	id := appraise.DefaultPolicy().ID
	code := func(err error) int {
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		if err != nil {
			return -1
		}
		return 0
	}

	_, _, err := runVigil(ctx, append([]string{"policy", "show", id}, server...)...)
	if code(err) != 1 {
		t.Fatalf("show before any publish: %v", err)
	}
	v2 := writePolicy(t, appraise.DefaultPolicy().Version+1)
	if _, _, err := runVigil(ctx, append([]string{"policy", "publish", v2}, server...)...); code(err) != 2 {
		t.Fatalf("publish without --reason: %v", err)
	}
	out, _, err := runVigil(ctx, append([]string{"policy", "publish", v2, "--reason", "raise the minimum TCB"}, server...)...)
	if err != nil || !strings.Contains(out, "published policy "+id) {
		t.Fatalf("publish: %v %q", err, out)
	}
	// The same version again, or an older one, is refused: versions only go up.
	for _, path := range []string{v2, writePolicy(t, 1)} {
		if _, _, err := runVigil(ctx, append([]string{"policy", "publish", path, "--reason", "again"}, server...)...); code(err) != 1 {
			t.Fatalf("republishing %s: %v", path, err)
		}
	}
	out, _, err = runVigil(ctx, append([]string{"policy", "show", id}, server...)...)
	if err != nil || !strings.Contains(out, "raise the minimum TCB") || !strings.Contains(out, "sha256:") {
		t.Fatalf("show: %v %q", err, out)
	}
	if _, err := appraise.ParsePolicy([]byte(out)); err != nil {
		t.Fatalf("show does not print a usable policy document: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	if err := os.WriteFile(bad, []byte("id: x\nversion: 2\nsnp: {allow_debug: maybe}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := runVigil(ctx, append([]string{"policy", "publish", bad, "--reason", "x"}, server...)...); code(err) != 2 {
		t.Fatalf("invalid policy: %v", err)
	}
}

// Under auth an administrator publishes on its own subject: the actor is
// the credentials' name, and an --actor naming someone else is refused.
func TestPolicyPublishUnderAuth(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	srv.JetStream()
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	creds := filepath.Join(dir, busauth.CredsFile(busauth.Admin))
	ctx := context.Background()
	server := []string{"--nats-url", srv.URL(), "--nats-creds", creds}
	id := appraise.DefaultPolicy().ID
	v2 := writePolicy(t, appraise.DefaultPolicy().Version+1)
	if _, _, err := runVigil(ctx, append([]string{"policy", "publish", v2, "--reason", "r", "--actor", "mallory"}, server...)...); exitCode(err) != 2 {
		t.Fatalf("publish with an --actor other than the credentials': %v", err)
	}
	out, _, err := runVigil(ctx, append([]string{"policy", "publish", v2, "--reason", "raise the minimum TCB"}, server...)...)
	want := busauth.AdminPolicySubject(id, busauth.DefaultAdminName)
	if err != nil || !strings.Contains(out, want) {
		t.Fatalf("publish: %v %q, want it on %s", err, out, want)
	}
	out, _, err = runVigil(ctx, append([]string{"policy", "show", id}, server...)...)
	if err != nil || !strings.Contains(out, "by "+busauth.DefaultAdminName+":") {
		t.Fatalf("show: %v %q", err, out)
	}
	// Keyguard's operator API likewise.
	_, code, _ := runKeyguardCLI(t, "", append([]string{"keyguard", "revoke", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "--reason", "r", "--actor", "mallory"}, server...)...)
	if code != 2 {
		t.Fatalf("revoke with an --actor other than the credentials': exit %d", code)
	}
}

func TestActorMustBeASubjectToken(t *testing.T) {
	v2 := writePolicy(t, appraise.DefaultPolicy().Version+1)
	for _, a := range []string{"", "a.b", "a*", "a b"} {
		if _, _, err := runVigil(context.Background(), "policy", "publish", v2, "--reason", "r", "--actor", a, "--nats-url", "nats://127.0.0.1:1"); exitCode(err) != 2 {
			t.Errorf("--actor %q: %v, want exit 2", a, err)
		}
	}
}
