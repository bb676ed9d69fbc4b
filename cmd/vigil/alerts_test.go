package main

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/notifier"
)

const testWebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

// TestAlertsCommandsUnderAuth: in operator mode, the administrator
// subscribes `vigil alerts receive` (handshake), tests it, and the
// notifier (as the notifier principal) delivers an alert to it, signed;
// list shows health, show no secret; a silence is set and audited on the
// bus; pause, resume and delete work.
func TestAlertsCommandsUnderAuth(t *testing.T) {
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
	creds := func(p busauth.Principal) string { return filepath.Join(dir, busauth.CredsFile(p)) }
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	nctx, stopNotifier := context.WithCancel(ctx)
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- notifier.Run(nctx, notifier.Config{
			Options:           service.Options{NATS: bus.Config{URL: srv.URL(), CredsFile: creds(busauth.Notifier)}, Ready: func() { close(ready) }},
			KeyFile:           filepath.Join(t.TempDir(), "notifier.key"),
			GenerateKey:       true,
			AllowPrivateSinks: true,
			HealthInterval:    20 * time.Millisecond,
		})
	}()
	defer func() {
		stopNotifier()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("notifier: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("notifier: %v", err)
	}

	admin := []string{"--nats-url", srv.URL(), "--nats-creds", creds(busauth.Admin)}
	addr := freeAddr(t)
	recvOut := make(chan string, 1)
	go func() {
		out, _, err := runVigil(ctx, "alerts", "receive", "--listen", addr, "--secret", testWebhookSecret, "--count", "2")
		if err != nil {
			t.Errorf("receive: %v", err)
		}
		recvOut <- out
	}()
	run := func(args ...string) string {
		t.Helper()
		out, errOut, err := runVigil(ctx, append(append([]string{"alerts"}, args...), admin...)...)
		if err != nil {
			t.Fatalf("vigil alerts %s: %v %s", strings.Join(args, " "), err, errOut)
		}
		return out
	}
	// The receiver may take a moment to listen: retry subscribe's handshake.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, errOut, err := runVigil(ctx, append([]string{"alerts", "subscribe", "--id", "ops", "--sink", "http://" + addr + "/",
			"--secret", testWebhookSecret, "--severity", "high", "--allow-private-sinks"}, admin...)...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribe: %v %s", err, errOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out := run("test", "ops"); !strings.Contains(out, "delivered test notification") {
		t.Fatalf("test: %q", out)
	}
	worker, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), CredsFile: creds(busauth.AttestWorker), InboxPrefix: busauth.InboxPrefix(busauth.AttestWorker)})
	if err != nil {
		t.Fatal(err)
	}
	defer worker.Close()
	const vm = "aldtmn2tg7p3rh5huznzu5dk3n"
	if err := worker.PublishAlert(ctx, "attest-worker", "", events.Alert{Severity: events.SeverityCritical, Code: "vm.untrusted", VMKey: vm,
		Message: "untrusted", Key: events.AlertKey(vm, "attestation"), State: events.AlertFiring}); err != nil {
		t.Fatal(err)
	}
	var printed string
	select {
	case printed = <-recvOut:
	case <-ctx.Done():
		t.Fatal("receive did not get two notifications")
	}
	if !strings.Contains(printed, "vigil.test") || !strings.Contains(printed, "vm.untrusted") || !strings.Contains(printed, vm) {
		t.Errorf("receive printed %q", printed)
	}
	list := run("list")
	if !strings.Contains(list, "ops") || !strings.Contains(list, "active") || strings.Contains(list, testWebhookSecret) {
		t.Errorf("list: %q", list)
	}
	if show := run("show", "ops"); strings.Contains(show, testWebhookSecret) || strings.Contains(show, addr+"/") && strings.Contains(show, "sealed\": \"") {
		t.Errorf("show leaks: %q", show)
	}
	run("silence", "--match", "code=vm.stale", "--for", "1h", "--reason", "maintenance", "--id", "maint")
	if out := run("silence", "list"); !strings.Contains(out, "maint") || !strings.Contains(out, busauth.DefaultAdminName) {
		t.Errorf("silence list: %q", out)
	}
	s, err := worker.JS.Stream(ctx, events.StreamEvents)
	if err == nil {
		_, err = s.GetLastMsgForSubject(ctx, events.SilenceSubject(busauth.DefaultAdminName))
	}
	if err != nil {
		// The attest-worker may not read it; the administrator may.
		adm, aerr := bus.Connect(ctx, bus.Config{URL: srv.URL(), CredsFile: creds(busauth.Admin), InboxPrefix: busauth.AdminInboxPrefix(busauth.DefaultAdminName)})
		if aerr != nil {
			t.Fatal(aerr)
		}
		defer adm.Close()
		s, err = adm.JS.Stream(ctx, events.StreamEvents)
		if err == nil {
			_, err = s.GetLastMsgForSubject(ctx, events.SilenceSubject(busauth.DefaultAdminName))
		}
		if err != nil {
			t.Errorf("the silence is not on VIGIL_EVENTS: %v", err)
		}
	}
	run("pause", "ops")
	if out := run("list"); !strings.Contains(out, "paused") {
		t.Errorf("after pause: %q", out)
	}
	run("resume", "ops")
	run("dlq", "list")
	run("delete", "ops")
	if out := run("list"); strings.Contains(out, "ops") {
		t.Errorf("after delete: %q", out)
	}
}
