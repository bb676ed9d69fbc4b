//go:build unix

package main

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

// TestEnsureFileLimit: a need within the limit changes nothing; a need
// beyond the hard limit is either met (the process may raise it) or
// refused with the figures and what to do, never silently left short.
func TestEnsureFileLimit(t *testing.T) {
	var orig syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &orig); err != nil {
		t.Skipf("no RLIMIT_NOFILE: %v", err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &orig) })

	if err := ensureFileLimit(orig.Cur, "within"); err != nil {
		t.Fatalf("a need within the limit: %v", err)
	}
	need := orig.Max + 1000
	err := ensureFileLimit(need, "--vms 123 under test")
	var now syscall.Rlimit
	if gerr := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &now); gerr != nil {
		t.Fatal(gerr)
	}
	var fl *fileLimitError
	switch {
	case err == nil && now.Cur < need:
		t.Fatalf("no error, but the limit is %d, below the %d needed", now.Cur, need)
	case err == nil:
		// This process may raise its hard limit.
	case !errors.As(err, &fl):
		t.Fatalf("error %T %v, want *fileLimitError", err, err)
	default:
		for _, want := range []string{"--vms 123 under test", "ulimit -n", "vigil sim run"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%q does not say %q", err, want)
			}
		}
		if fl.need != need || fl.limit < orig.Cur {
			t.Errorf("figures need %d limit %d, want need %d and the limit", fl.need, fl.limit, need)
		}
	}
}
