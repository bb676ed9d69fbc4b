package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

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
