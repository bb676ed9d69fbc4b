package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// startDev runs `vigil dev` in-process on a free port with a temporary data
// directory and returns the NATS URL it printed, its data directory and a
// function that stops it (Ctrl-C) and returns its error.
func startDev(t *testing.T, extra ...string) (url, data string, stop func() error) {
	t.Helper()
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	data = filepath.Join(t.TempDir(), "dev")
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb syncBuffer
	cmd := newRootCmd()
	cmd.SetArgs(append([]string{"dev", "--listen", fmt.Sprintf("127.0.0.1:%d", port), "--data", data, "--ops-listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--log-file", "-"}, extra...))
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	re := regexp.MustCompile(`(?m)^  vigil events tail --nats-url (nats://\S+)(?: --nats-creds (\S+))?$`)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if m := re.FindStringSubmatch(out.String()); m != nil {
			url = m[1]
			if auth := !slices.Contains(extra, "--no-auth"); auth != (m[2] != "") {
				t.Errorf("banner's tail command %q: auth %v", m[0], auth)
			}
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("vigil dev ended early: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("vigil dev printed no tail command:\n%s\nstderr:\n%s", out.String(), errb.String())
		}
	}
	if want := fmt.Sprintf("nats://127.0.0.1:%d", port); url != want {
		t.Errorf("banner URL = %s, want %s", url, want)
	}
	stopped := false
	var runErr error
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(30 * time.Second):
				runErr = errors.New("vigil dev did not stop within 30s of Ctrl-C")
			}
		}
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return url, data, stop
}

// credsConn connects to the dev bus as principal p with its credentials
// file under <data>/auth/creds.
func credsConn(t *testing.T, url, data string, p busauth.Principal) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserCredentials(filepath.Join(data, "auth", busauth.CredsFile(p))), nats.CustomInboxPrefix(busauth.InboxPrefix(p)))
	if err != nil {
		t.Fatalf("connect as %s: %v", p, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestDevThenTail runs the bus alone under auth (the default): a
// connection without credentials is refused, the administrator sees every
// stream, a producer with ingest's credentials publishes and the banner's
// tail command, with the administrator's credentials, prints it.
func TestDevThenTail(t *testing.T) {
	url, data, stop := startDev(t, "--bus-only")

	if nc, err := nats.Connect(url, nats.Timeout(5*time.Second)); err == nil {
		nc.Close()
		t.Fatal("the dev server accepts a connection without credentials")
	}
	for _, f := range []string{"auth", filepath.Join("auth", "creds"), filepath.Join("auth", busauth.CredsFile(busauth.Admin))} {
		fi, err := os.Stat(filepath.Join(data, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, want no access for others", f, fi.Mode().Perm())
		}
	}
	_, admin := credsConn(t, url, data, busauth.Admin)
	for _, s := range events.Streams(events.Topology{}) {
		if _, err := admin.Stream(context.Background(), s.Name); err != nil {
			t.Errorf("vigil dev did not provision %s: %v", s.Name, err)
		}
	}
	// A producer on the dev bus.
	nc, js := credsConn(t, url, data, busauth.Ingest)
	var want []string
	for i := range 3 {
		vm := events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/dev%d", i))
		want = append(want, publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, i)).ID)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, stderr, err := runVigil(ctx, "events", "tail", "--nats-url", url, "--nats-creds", filepath.Join(data, "auth", busauth.CredsFile(busauth.Admin)), "--count", "3")
	if err != nil {
		t.Fatalf("tail: %v (%s)", err, stderr)
	}
	if got := ids(parseLines(t, out)); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("tail printed %v, want %v", got, want)
	}

	nc.Close()
	if err := stop(); err != nil {
		t.Fatalf("vigil dev after Ctrl-C: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "nats", "jetstream")); err != nil {
		t.Errorf("no JetStream store in <data>/nats: %v", err)
	}
	// Stopped means stopped: the port is free again.
	if _, err := nats.Connect(url, nats.Timeout(time.Second)); err == nil {
		t.Error("NATS still answers after vigil dev stopped")
	}
}

func TestDevDuration(t *testing.T) {
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, stderr, err := runVigil(context.Background(), "dev", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--data", t.TempDir(), "--ops-listen", "", "--duration", "300ms", "--bus-only", "--log-file", "-")
	if err != nil {
		t.Fatalf("dev --duration: %v\n%s", err, stderr)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Errorf("dev --duration 300ms took %s", el)
	}
	if !strings.Contains(out, "Stop with Ctrl-C.") || strings.Contains(out, "/metrics") {
		t.Errorf("banner:\n%s", out)
	}
	if !strings.Contains(stderr, `"msg":"nats stopped"`) {
		t.Errorf("no clean stop in the log:\n%s", stderr)
	}
}

// TestDevNoAuth: --no-auth runs an open bus, and only when every listener
// is loopback.
func TestDevNoAuth(t *testing.T) {
	for _, args := range [][]string{
		{"--listen", "0.0.0.0:0"},
		{"--listen", ":0"},
		{"--http", "0.0.0.0:0"},
		{"--ops-listen", "192.0.2.1:9464"},
	} {
		_, _, err := runVigil(context.Background(), append([]string{"dev", "--no-auth", "--data", t.TempDir(), "--ops-listen", "", "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--bus-only"}, args...)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, "loopback") {
			t.Errorf("--no-auth %v: err = %v, want exit status 2 naming loopback", args, err)
		}
	}
	url, _, stop := startDev(t, "--bus-only", "--no-auth")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatalf("--no-auth: %v", err)
	}
	nc.Close()
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestDevBusyPort(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	start := time.Now()
	_, _, err = runVigil(context.Background(), "dev", "--listen", ln.Addr().String(), "--data", t.TempDir(), "--ops-listen", "")
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(ee.msg, ln.Addr().String()) {
		t.Fatalf("dev on a busy port: %v", err)
	}
	if time.Since(start) > 5*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
}

func TestDevBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--duration", "-1s"},
		{"--log-level", "loud"},
		{"--listen", "nowhere"},
	} {
		_, _, err := runVigil(context.Background(), append([]string{"dev", "--data", t.TempDir(), "--ops-listen", ""}, args...)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("%v: err = %v, want exit status 2", args, err)
		}
	}
}
