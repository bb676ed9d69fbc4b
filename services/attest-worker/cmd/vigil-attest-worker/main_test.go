package main

import (
	"errors"
	"testing"
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
		{"extra"},
	} {
		if err := run(args); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
	if err := run([]string{"-policy", "/nonexistent/policy.yaml"}); err == nil || errors.Is(err, errUsage) {
		t.Errorf("missing policy file: %v", err)
	}
}
