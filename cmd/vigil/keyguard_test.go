package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// runKeyguardCLI runs the CLI with args and returns stdout and the exit code.
func runKeyguardCLI(t *testing.T, stdin string, args ...string) (string, int, error) {
	t.Helper()
	cmd := newRootCmd()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(io.Discard)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), exitCode(err), err
}

func TestKeyguardCommands(t *testing.T) {
	srv := natstest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()

	// No keyguard yet: operator requests fail clearly.
	vmKey := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/x")
	out, code, err := runKeyguardCLI(t, "", "keyguard", "restore", vmKey, "--reason", "r", "--nats-url", srv.URL())
	if code != 1 || !strings.Contains(err.Error(), "no keyguard is running") {
		t.Fatalf("restore without keyguard: code %d, %v, %q", code, err, out)
	}

	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	masterFile := writeMaster(t, filepath.Join(t.TempDir(), "master.key"))
	kctx, kcancel := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- keyguard.Run(kctx, keyguard.Config{
			Options:           service.Options{Conn: conn, Provision: true, Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Ready: func() { close(ready) }},
			MasterKeyFile:     masterFile,
			Evidence:          keyguard.EvidenceConfig{Verifier: evidence.Config{TestRoots: auth.TrustRoots(), Offline: true}, Policy: auth.Policy()},
			ReconcileInterval: time.Hour,
		})
	}()
	defer func() {
		kcancel()
		if err := <-done; err != nil {
			t.Errorf("keyguard: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("keyguard: %v", err)
	}

	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	status := func(s events.Status) {
		kv, err := conn.JS.KeyValue(ctx, events.BucketStatus)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(events.VMStatus{VMKey: vm.VMKey(), VMID: vm.VMID(), Status: s, Since: time.Now().UTC()})
		if _, err := kv.Put(ctx, vm.VMKey(), b); err != nil {
			t.Fatal(err)
		}
	}
	status(events.StatusTrusted)
	// The VM's vmId, as ingest learns it from ARM: keyguard takes it from
	// nowhere else.
	inv, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		t.Fatal(err)
	}
	rec, _ := json.Marshal(events.VM{VMKey: vm.VMKey(), ResourceID: vm.ResourceID(), VMID: vm.VMID()})
	if _, err := inv.Put(ctx, vm.VMKey(), rec); err != nil {
		t.Fatal(err)
	}
	srvFlag := []string{"--nats-url", srv.URL()}

	// Secrets: put from stdin, list.
	out, code, err = runKeyguardCLI(t, "s3cret-disk-key", append([]string{"keyguard", "secret", "put", "disk-key", "--file", "-", "--master-key-file", masterFile}, srvFlag...)...)
	if code != 0 || !strings.Contains(out, "stored disk-key version") {
		t.Fatalf("secret put: %d %v %q", code, err, out)
	}
	if _, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "secret", "put", "disk-key", "--file", "-"}, srvFlag...)...); code != 2 {
		t.Fatalf("secret put without master key: exit %d", code)
	}
	out, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "secret", "list", "--master-key-file", masterFile}, srvFlag...)...)
	if code != 0 || strings.TrimSpace(out) != "disk-key" {
		t.Fatalf("secret list: %d %q", code, out)
	}

	// Grant, by resource ID; a second grant is refused.
	out, code, err = runKeyguardCLI(t, "", append([]string{"keyguard", "grant", vm.ResourceID(), "disk-key", "--actor", "alice"}, srvFlag...)...)
	if code != 0 || !strings.Contains(out, "disk-key on local for VM "+vm.VMKey()+" is now active") {
		t.Fatalf("grant: %d %v %q", code, err, out)
	}
	if _, code, err = runKeyguardCLI(t, "", append([]string{"keyguard", "grant", vm.VMKey(), "disk-key"}, srvFlag...)...); code != 1 || !strings.Contains(err.Error(), keyguard.CodeGrantExists) {
		t.Fatalf("second grant: %d %v", code, err)
	}

	// The VM gets the secret that was put.
	cl := &keyrelease.Client{Requester: conn, VMKey: vm.VMKey(), Attester: keyrelease.AttesterFunc(func(_ context.Context, nonce, extra []byte) ([]byte, error) {
		b, err := vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: extra})
		if err != nil {
			return nil, err
		}
		return b.Marshal()
	})}
	rel, err := cl.Release(ctx, "disk-key")
	if err != nil || string(rel.Secret) != "s3cret-disk-key" {
		t.Fatalf("release: %v", err)
	}

	// Revoked by a contraindicated verdict; grants shows it.
	if _, err := conn.PublishEvent(ctx, events.VerdictSubject(vm.VMKey()), events.TypeVerdict, "test",
		events.Verdict{VMKey: vm.VMKey(), Status: events.VerdictContraindicated, IssuedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	status(events.StatusUntrusted)
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "grants", vm.VMKey(), "--json"}, srvFlag...)...)
		var g grants.Grant
		if code == 0 && json.Unmarshal([]byte(out), &g) == nil && g.State == grants.Revoked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("grants --json: %d %q", code, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	out, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "grants"}, srvFlag...)...)
	if code != 0 || !strings.Contains(out, "STATE") || !strings.Contains(out, "revoked") || !strings.Contains(out, "untrusted") {
		t.Fatalf("grants table: %d\n%s", code, out)
	}

	// Restore: usage errors, refusal while untrusted, success once trusted.
	if _, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "restore", vm.VMKey()}, srvFlag...)...); code != 2 {
		t.Fatalf("restore without --reason: exit %d", code)
	}
	if _, code, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "restore", "not-a-vm", "--reason", "x"}, srvFlag...)...); code != 2 {
		t.Fatalf("restore of a bad VM: exit %d", code)
	}
	if _, code, err = runKeyguardCLI(t, "", append([]string{"keyguard", "restore", vm.VMKey(), "--reason", "x"}, srvFlag...)...); code != 1 || !strings.Contains(err.Error(), keyrelease.CodeNotTrusted) {
		t.Fatalf("restore while untrusted: %d %v", code, err)
	}
	status(events.StatusTrusted)
	out, code, err = runKeyguardCLI(t, "", append([]string{"keyguard", "restore", vm.ResourceID(), "--reason", "re-imaged, INC-7", "--actor", "bob"}, srvFlag...)...)
	if code != 0 || !strings.Contains(out, "is now active") {
		t.Fatalf("restore: %d %v %q", code, err, out)
	}
	out, _, _ = runKeyguardCLI(t, "", append([]string{"keyguard", "grants", vm.VMKey(), "--json"}, srvFlag...)...)
	var g grants.Grant
	if err := json.Unmarshal([]byte(out), &g); err != nil || g.State != grants.Active || g.Actor != "bob" || g.Reason != "re-imaged, INC-7" {
		t.Fatalf("grant after restore %+v, %v", g, err)
	}

	// Revoke by hand.
	out, code, err = runKeyguardCLI(t, "", append([]string{"keyguard", "revoke", vm.VMKey(), "--key", "disk-key", "--reason", "suspected leak", "--actor", "carol"}, srvFlag...)...)
	if code != 0 || !strings.Contains(out, "is now revoked") {
		t.Fatalf("revoke: %d %v %q", code, err, out)
	}
}

func writeMaster(t *testing.T, path string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Repeat("ab", 32)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
