package main

import (
	"errors"
	"io"
	"testing"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-challenge-timeout", "soon"},
		{"-challenge-timeout", "-1s"},
		{"extra"},
		{"-log-level", "loud"},
		{"release"},
		{"release", "a", "b"},
		{"release", "bad.name"},
		{"release", "-timeout", "0s", "disk-key"},
	} {
		if err := run(args, io.Discard); !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want a usage error", args, err)
		}
	}
}
