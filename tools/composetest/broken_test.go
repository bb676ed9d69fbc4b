//go:build compose

package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestComposeTestFailsWhenAServiceCannotStart is the test of the test: with
// one environment variable of ingest broken, the run fails, naming the
// service and showing why, and leaves nothing behind. It needs a Docker
// engine and compose (make compose-test runs it).
func TestComposeTestFailsWhenAServiceCannotStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	o := options{files: []string{"deploy/compose/compose.yaml"}, root: "../..",
		breakEnv: stringList{"ingest:VIGIL_RECONCILE_INTERVAL=every-now-and-then"}}
	_, err := run(ctx, o, t.Logf)
	if err == nil {
		t.Fatal("the run passed with ingest's VIGIL_RECONCILE_INTERVAL broken")
	}
	for _, want := range []string{"service ingest cannot start", "VIGIL_RECONCILE_INTERVAL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the failure does not say %q:\n%v", want, err)
		}
	}
	t.Logf("the run failed as it should:\n%v", err)
	left, err := docker(ctx, "ps", "-aq", "--filter", "label=com.docker.compose.service=ingest", "--filter", "ancestor=vigil-compose-test/ingest")
	if err == nil && strings.TrimSpace(left) != "" {
		t.Errorf("containers left behind: %s", left)
	}
}
