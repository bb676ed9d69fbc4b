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
		{"-batch-size", "0"},
		{"-checkpoint-interval", "often"},
		{"-generate-keys=maybe"},
		{"-log-level", "loud"},
		{"-nats-url", "nats://127.0.0.1:1"}, // no -log-dir: a configuration error
		{"extra"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-auditor", args, io.Discard, define); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
}
