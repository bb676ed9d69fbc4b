package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/svcmain"
)

// TestUsage: an address other than loopback without a token file or a
// proxy header, and an unreadable token file, are usage errors (exit 2).
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-addr", "0.0.0.0:0"}, "needs a token or a proxy header"},
		{[]string{"-token-file", "/nonexistent/token"}, "-token-file"},
	} {
		var stderr bytes.Buffer
		code := svcmain.Run(context.Background(), "vigil-console", append(tc.args, "-http", ""), &stderr, define)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q", tc.args, code, stderr.String())
		}
	}
}
