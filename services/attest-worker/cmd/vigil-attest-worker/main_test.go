package main

import (
	"context"
	"io"
	"testing"

	"github.com/vigil-cc/vigil/pkg/svcmain"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-replicas", "2"},
		{"-concurrency", "0"},
		{"-interval", "often"},
		{"-grace", "-1m"},
		{"-jitter", "a lot"},
		{"-offline", "maybe"},
		{"-log-level", "loud"},
		{"-policy", "/nonexistent/policy.yaml"},
		{"extra"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-attest-worker", args, io.Discard, define); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
}
