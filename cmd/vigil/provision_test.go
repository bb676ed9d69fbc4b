package main

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// TestProvisionAsAdmin: on an operator-mode server `vigil provision` with
// the administrator's credentials creates every stream and bucket, then
// finds them unchanged; other principals' credentials and bad flags are
// usage errors; without credentials the server refuses the connection.
func TestProvisionAsAdmin(t *testing.T) {
	dir, _ := authInit(t)
	srv := startFromDir(t, dir)
	creds := func(p busauth.Principal) string { return filepath.Join(dir, busauth.CredsFile(p)) }
	ctx := context.Background()
	conn := connectCredsFile(t, srv, creds(busauth.Admin))
	if err := events.CheckTopology(ctx, conn.JS, events.Topology{}); !errors.Is(err, events.ErrTopology) {
		t.Fatalf("before provisioning: %v, want ErrTopology", err)
	}

	runs := []struct {
		name string
		args []string
		code int
		want string // in every stream's and bucket's line
	}{
		{"first", []string{"--nats-creds", creds(busauth.Admin)}, 0, "created"},
		{"again", []string{"--nats-creds", creds(busauth.Admin)}, 0, "unchanged"},
		{"as ingest", []string{"--nats-creds", creds(busauth.Ingest)}, 2, ""},
		{"no credentials", nil, 1, ""},
		{"two replicas", []string{"--nats-creds", creds(busauth.Admin), "--replicas", "2"}, 2, ""},
		{"stray argument", []string{"--nats-creds", creds(busauth.Admin), "now"}, 2, ""},
	}
	for _, tc := range runs {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"provision", "--nats-url", srv.URL(), "--timeout", "20s"}, tc.args...)
			out, _, err := runVigil(ctx, args...)
			if got := exitCode(err); got != tc.code {
				t.Fatalf("exit code %d (%v), want %d\n%s", got, err, tc.code, out)
			}
			if tc.want == "" {
				return
			}
			for _, s := range events.Streams(events.Topology{}) {
				if !strings.Contains(out, "stream  "+s.Name) || !lineHas(out, s.Name, tc.want) {
					t.Errorf("stream %s not %s:\n%s", s.Name, tc.want, out)
				}
			}
			for _, b := range events.Buckets(events.Topology{}) {
				if !lineHas(out, b.Bucket, tc.want) {
					t.Errorf("bucket %s not %s:\n%s", b.Bucket, tc.want, out)
				}
			}
		})
	}

	// Every stream and bucket is there as the services require it.
	if err := events.CheckTopology(ctx, conn.JS, events.Topology{}); err != nil {
		t.Fatalf("after provisioning: %v", err)
	}
	for _, s := range events.Streams(events.Topology{}) {
		if _, err := conn.JS.Stream(ctx, s.Name); err != nil {
			t.Errorf("stream %s: %v", s.Name, err)
		}
	}
	for _, b := range events.Buckets(events.Topology{}) {
		if _, err := conn.JS.KeyValue(ctx, b.Bucket); err != nil {
			t.Errorf("bucket %s: %v", b.Bucket, err)
		}
	}
}

// lineHas reports whether the line of out naming name (as a whole field)
// holds want.
func lineHas(out, name, want string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[1] == name {
			return f[2] == want
		}
	}
	return false
}
