package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/keyguard"
)

func TestUsageErrors(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "master.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("01", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	badCfg := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(badCfg, []byte("grants:\n  - vm: x\n    key: k\n    colour: red\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{}, // no master key
		{"-master-key-file", key, "-replicas", "2"},
		{"-master-key-file", key, "-nonce-ttl", "soon"},
		{"-master-key-file", key, "-enroll-rate", "0"},
		{"-master-key-file", key, "-enroll-rate", "NaN"},
		{"-master-key-file", key, "-enroll-burst", "0"},
		{"-master-key-file", key, "-enroll-burst", "many"},
		{"-master-key-file", key, "-evidence-offline=maybe"},
		{"-master-key-file", key, "-config", badCfg},
		{"-master-key-file", key, "-policy", filepath.Join(dir, "missing.yaml")},
		{"-no-such-flag"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-keyguard", args, io.Discard, define); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
	// A configuration keyguard rejects is a configuration error (exit 2).
	var stderr strings.Builder
	args := []string{"-master-key-file", key, "-auto-restore", "retired", "-nats-url", "nats://127.0.0.1:1"}
	if code := svcmain.Run(context.Background(), "vigil-keyguard", args, &stderr, define); code != 2 || !strings.Contains(stderr.String(), keyguard.ErrConfig.Error()) {
		t.Errorf("auto-restore of retired: exit %d (%s), want a configuration error", code, stderr.String())
	}
}

// Threat: keyguard's master key in a file other users can read. Defence:
// keyguard does not start (a configuration error naming the file, its mode
// and the fix), with or without -create-master-key, and leaves the file as
// it is.
func TestMasterKeyReadableByOthersRefused(t *testing.T) {
	for _, create := range []bool{false, true} {
		t.Run(fmt.Sprintf("create=%t", create), func(t *testing.T) {
			key := filepath.Join(t.TempDir(), "master.key")
			content := []byte(strings.Repeat("01", 32))
			if err := os.WriteFile(key, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(key, 0o644); err != nil {
				t.Fatal(err)
			}
			args := []string{"-master-key-file", key, "-nats-url", "nats://127.0.0.1:1", fmt.Sprintf("-create-master-key=%t", create)}
			var stderr strings.Builder
			code := svcmain.Run(context.Background(), "vigil-keyguard", args, &stderr, define)
			if code != 2 || !strings.Contains(stderr.String(), key) || !strings.Contains(stderr.String(), "chmod 600") {
				t.Fatalf("exit %d (%s), want a configuration error naming %s and the fix", code, stderr.String(), key)
			}
			if b, _ := os.ReadFile(key); string(b) != string(content) {
				t.Fatal("the refused key file was rewritten")
			}
		})
	}
}

// The binary serves health and metrics and stops cleanly.
func TestRunServesHealth(t *testing.T) {
	srv := natstest.Start(t)
	dir := t.TempDir()
	key := filepath.Join(dir, "master.key")
	if err := os.WriteFile(key, []byte(strings.Repeat("01", 32)), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	// The binary never provisions: before the operator has, it exits 2.
	args := []string{"-nats-url", srv.URL(), "-master-key-file", key, "-http", addr, "-evidence-offline", "-log-level", "warn"}
	if code := svcmain.Run(t.Context(), "vigil-keyguard", args, io.Discard, define); code != 2 {
		t.Fatalf("exit %d without provisioned streams, want 2", code)
	}
	srv.JetStream() // vigil provision
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- svcmain.Run(ctx, "vigil-keyguard", args, io.Discard, define)
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("/readyz: %d %s", resp.StatusCode, body)
			}
		} else if time.Now().After(deadline) {
			t.Fatalf("/readyz: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "go_goroutines") {
		t.Fatalf("/metrics: %d", resp.StatusCode)
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("exit %d after a clean stop", code)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("did not stop")
	}
}
