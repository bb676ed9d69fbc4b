package bus_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// lockedBuffer is a bytes.Buffer safe for the concurrent writes of a logger
// used by NATS callbacks.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestNATSURLCredentialsNotDisclosed: a NATS URL may carry credentials
// (nats://user:password@host, nats://token@host, in a comma-separated
// list). Whoever reads the service's logs or an error it returns must not
// learn them: whether the server is unreachable, the URL does not parse, or
// the connection is up and reconnects.
func TestNATSURLCredentialsNotDisclosed(t *testing.T) {
	const secret = "s3cret"
	srv := natstest.Start(t)
	hostPort := strings.TrimPrefix(srv.URL(), "nats://")
	for _, tc := range []struct {
		name      string
		url       string
		wait      bool   // WaitForServer, until the context ends
		reachable bool   // connects; the server then restarts
		logged    string // a log line that must appear (naming the URL)
		shown     string // the redacted URL in the error
		invalid   bool   // refused before connecting (ErrInvalidURL)
	}{
		{name: "unreachable, user and password", url: "nats://user:" + secret + "@127.0.0.1:1", shown: "nats://user:redacted@127.0.0.1:1"},
		{name: "unreachable, waiting", url: "nats://user:" + secret + "@127.0.0.1:1", wait: true, logged: "waiting for NATS", shown: "nats://user:redacted@127.0.0.1:1"},
		{name: "unreachable list with a token", url: "nats://127.0.0.1:1, nats://tok-" + secret + "@127.0.0.1:2", wait: true, logged: "waiting for NATS",
			shown: "nats://127.0.0.1:1,nats://redacted@127.0.0.1:2"},
		{name: "unparsable URL", url: "nats://user:" + secret + "%zz@127.0.0.1:1", shown: "nats://user:redacted@127.0.0.1:1", invalid: true},
		{name: "password with a slash", url: "nats://user:" + secret + "/9@127.0.0.1:1", shown: "nats://user:redacted@127.0.0.1:1", invalid: true},
		{name: "password with a slash, waiting", url: "nats://user:" + secret + "/9@127.0.0.1:1", wait: true, shown: "nats://user:redacted@127.0.0.1:1", invalid: true},
		{name: "reachable, user and password", url: "nats://user:" + secret + "@" + hostPort, reachable: true, logged: "reconnected to NATS"},
		{name: "reachable, token", url: "nats://tok-" + secret + "@" + hostPort, reachable: true, logged: "reconnected to NATS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var logs lockedBuffer
			log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			timeout := 10 * time.Second
			if tc.wait {
				timeout = 500 * time.Millisecond
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			c, err := bus.Connect(ctx, bus.Config{URL: tc.url, Logger: log, WaitForServer: tc.wait, ReconnectWait: 20 * time.Millisecond})
			if tc.reachable {
				if err != nil {
					t.Fatalf("connect: %v", err)
				}
				t.Cleanup(func() { _ = c.Close() })
				srv.Restart()
				deadline := time.Now().Add(20 * time.Second)
				for !strings.Contains(logs.String(), tc.logged) {
					if time.Now().After(deadline) {
						t.Fatalf("no %q in the log:\n%s", tc.logged, logs.String())
					}
					time.Sleep(10 * time.Millisecond)
				}
			} else {
				want := bus.ErrConnect
				if tc.invalid {
					want = bus.ErrInvalidURL
				}
				if !errors.Is(err, want) {
					t.Fatalf("connect: %v, want %v", err, want)
				}
				if strings.Contains(err.Error(), secret) || !strings.Contains(err.Error(), tc.shown) {
					t.Errorf("error %q, want the URL shown as %s", err, tc.shown)
				}
				if !strings.Contains(logs.String(), tc.logged) {
					t.Errorf("no %q in the log:\n%s", tc.logged, logs.String())
				}
			}
			if strings.Contains(logs.String(), secret) {
				t.Errorf("the log discloses the credentials:\n%s", logs.String())
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                       "nats://127.0.0.1:4222",
		"nats://user:pw@h:4222":                       "nats://user:redacted@h:4222",
		"nats://tok@h:4222":                           "nats://redacted@h:4222",
		"user:pw@h:4222":                              "user:redacted@h:4222",
		"tls://a:b@h1:1,nats://h2:2,ws://t@h3:3/path": "tls://a:redacted@h1:1,nats://h2:2,ws://redacted@h3:3/path",
		"nats://u:p@ss@h":                             "nats://u:redacted@h",
		"":                                            "",
	} {
		if got := bus.RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
