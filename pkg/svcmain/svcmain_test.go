package svcmain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
)

func TestFlagsEnvironmentFallback(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string // substring; "" for success
		check   func(t *testing.T, s *string, d *time.Duration, b *bool, topo func() int)
	}{
		{name: "defaults", check: func(t *testing.T, s *string, d *time.Duration, b *bool, topo func() int) {
			if *s != "def" || *d != time.Minute || *b || topo() != 1 {
				t.Errorf("got %q %s %v %d", *s, *d, *b, topo())
			}
		}},
		{name: "environment", env: map[string]string{"VIGIL_SOME_NAME": "from-env", "VIGIL_WAIT": "5s", "VIGIL_FLAG": "true", "VIGIL_REPLICAS": "3"},
			check: func(t *testing.T, s *string, d *time.Duration, b *bool, topo func() int) {
				if *s != "from-env" || *d != 5*time.Second || !*b || topo() != 3 {
					t.Errorf("got %q %s %v %d", *s, *d, *b, topo())
				}
			}},
		{name: "command line wins", args: []string{"-some-name", "cli", "-wait", "2s"}, env: map[string]string{"VIGIL_SOME_NAME": "env", "VIGIL_WAIT": "bogus"},
			check: func(t *testing.T, s *string, d *time.Duration, b *bool, topo func() int) {
				if *s != "cli" || *d != 2*time.Second {
					t.Errorf("got %q %s", *s, *d)
				}
			}},
		{name: "bad environment value", env: map[string]string{"VIGIL_WAIT": "soon"}, wantErr: `VIGIL_WAIT="soon"`},
		{name: "bad boolean", env: map[string]string{"VIGIL_FLAG": "maybe"}, wantErr: "VIGIL_FLAG"},
		{name: "replicas", args: []string{"-replicas", "2"}, wantErr: "must be 1 or 3"},
		{name: "positional", args: []string{"extra"}, wantErr: `unexpected argument "extra"`},
		{name: "unknown flag", args: []string{"-nope"}, wantErr: "nope"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			f := NewFlags("test")
			f.SetOutput(&bytes.Buffer{})
			s := f.String("some-name", "def", "a string")
			d := f.Duration("wait", time.Minute, "a duration")
			b := f.Bool("flag", false, "a boolean")
			topo := f.Replicas()
			err := f.Parse(tc.args)
			if tc.wantErr != "" {
				if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want a usage error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, s, d, b, func() int { return topo().Replicas })
		})
	}
}

func TestUsageNamesTheEnvironment(t *testing.T) {
	f := NewFlags("test")
	var out bytes.Buffer
	f.SetOutput(&out)
	f.NATS("test")
	f.Duration("grace-period", time.Second, "how long")
	f.Usage()
	for _, v := range []string{"VIGIL_NATS_URL", "VIGIL_NATS_CREDS", "VIGIL_NATS_CA", "VIGIL_NATS_CERT", "VIGIL_NATS_KEY", "VIGIL_GRACE_PERIOD"} {
		if !strings.Contains(out.String(), v) {
			t.Errorf("usage does not name %s:\n%s", v, out.String())
		}
	}
}

func TestRunExitCodes(t *testing.T) {
	tests := []struct {
		name string
		args []string
		err  error
		want int
	}{
		{"clean stop", nil, nil, 0},
		{"failure", nil, errors.New("boom"), 1},
		{"config error", nil, ErrUsage, 2},
		{"topology not provisioned", nil, fmt.Errorf("keyguard: %w: stream VIGIL_EVENTS is missing", service.ErrTopology), 2},
		{"bad flag", []string{"-x"}, nil, 2},
		{"bad log level", []string{"-log-level", "loud"}, nil, 2},
		{"help", []string{"-h"}, nil, 0},
		{"stopped while waiting", nil, fmt.Errorf("waiting for NATS: %w", context.Canceled), 0},
		{"cancelled without a stop", nil, context.Canceled, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.name == "stopped while waiting" {
				cancel() // as SIGTERM does
			}
			got := Run(ctx, "vigil-test", tc.args, &stderr, func(f *Flags) RunFunc {
				return func(ctx context.Context, rt Runtime) error {
					if rt.Logger == nil || rt.Telemetry == nil {
						t.Error("no logger or telemetry")
					}
					return tc.err
				}
			})
			if got != tc.want {
				t.Fatalf("exit %d, want %d\n%s", got, tc.want, stderr.String())
			}
		})
	}
}

// TestServiceFlags: every service takes the same connection, replica and
// listener flags, from the command line or VIGIL_* variables.
func TestServiceFlags(t *testing.T) {
	t.Setenv("VIGIL_NATS_URL", "nats://from-env:4222")
	t.Setenv("VIGIL_REPLICAS", "3")
	f := NewFlags("vigil-test")
	f.SetOutput(&bytes.Buffer{})
	opts := f.Service("vigil-test", ":9999")
	if err := f.Parse([]string{"-http", "127.0.0.1:0", "-nats-creds", "/c.creds"}); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	got := opts(Runtime{Logger: log})
	want := service.Options{
		NATS:     bus.Config{URL: "nats://from-env:4222", Name: "vigil-test", CredsFile: "/c.creds"},
		Topology: events.Topology{Replicas: 3},
		HTTPAddr: "127.0.0.1:0",
		Logger:   log,
	}
	if got.NATS != want.NATS {
		t.Errorf("NATS = %+v, want %+v", got.NATS, want.NATS)
	}
	if got.Topology != want.Topology {
		t.Errorf("Topology = %+v, want %+v", got.Topology, want.Topology)
	}
	if got.HTTPAddr != want.HTTPAddr {
		t.Errorf("HTTPAddr = %q, want %q", got.HTTPAddr, want.HTTPAddr)
	}
	if got.Logger != want.Logger {
		t.Error("Logger is not the runtime's")
	}
	if got.Provision {
		t.Error("a service binary provisions")
	}
}

// TestUnprovisionedTopologyExits2: a service binary started against a
// server whose streams and buckets were not provisioned stops at once with
// status 2, naming what is missing.
func TestUnprovisionedTopologyExits2(t *testing.T) {
	ns := natstest.Start(t)
	var stderr bytes.Buffer
	got := Run(t.Context(), "vigil-auditor", []string{"-nats-url", ns.URL(), "-http", ""}, &stderr, func(f *Flags) RunFunc {
		opts := f.Service("vigil-auditor", "")
		return func(ctx context.Context, rt Runtime) error {
			svc, err := service.Start(ctx, "auditor", opts(rt))
			if err != nil {
				return err
			}
			svc.Stop()
			return svc.Wait()
		}
	})
	if got != 2 {
		t.Fatalf("exit %d, want 2\n%s", got, stderr.String())
	}
	if !strings.Contains(stderr.String(), "stream VIGIL_EVENTS is missing") {
		t.Fatalf("stderr does not name the missing stream:\n%s", stderr.String())
	}
}

func TestExpectArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{{[]string{"key"}, true}, {nil, false}, {[]string{"a", "b"}, false}, {[]string{"-v", "key"}, true}} {
		f := NewFlags("test")
		f.SetOutput(&bytes.Buffer{})
		f.Bool("v", false, "verbose")
		f.ExpectArgs(1, "KEYNAME")
		err := f.Parse(tc.args)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err = %v", tc.args, err)
		}
		if err != nil && !strings.Contains(err.Error(), "KEYNAME") {
			t.Errorf("%q: error does not name the argument: %v", tc.args, err)
		}
	}
}
