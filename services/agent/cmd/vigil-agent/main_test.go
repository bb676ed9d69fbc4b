package main

import (
	"context"
	"io"
	"testing"

	"github.com/vigil-cc/vigil/pkg/svcmain"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-challenge-timeout", "soon"},
		{"-challenge-timeout", "-1s"},
		{"extra"},
		{"-log-level", "loud"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-agent", args, io.Discard, defineServe); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage)", args, code)
		}
	}
	for _, args := range [][]string{
		{},
		{"a", "b"},
		{"bad.name"},
		{"-timeout", "0s", "disk-key"},
	} {
		if code := svcmain.Run(context.Background(), "vigil-agent release", args, io.Discard, defineRelease(io.Discard)); code != 2 {
			t.Errorf("release %q: exit %d, want 2 (usage)", args, code)
		}
	}
}
