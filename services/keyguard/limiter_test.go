package keyguard

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiterRateAndBurst(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	cases := []struct {
		name  string
		rate  float64
		burst int
		at    []time.Duration // request times after t0, one key
		want  []bool
	}{
		{"burst then refused", 1, 3, []time.Duration{0, 0, 0, 0}, []bool{true, true, true, false}},
		{"refills at the rate", 1, 1, []time.Duration{0, 500 * time.Millisecond, time.Second, 2 * time.Second}, []bool{true, false, true, true}},
		{"never above the burst", 10, 2, []time.Duration{0, time.Hour, time.Hour, time.Hour}, []bool{true, true, true, false}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := newLimiter(tc.rate, tc.burst, 10)
			for i, d := range tc.at {
				if got := l.allow("k", t0.Add(d)); got != tc.want[i] {
					t.Fatalf("request %d at +%s: allowed %t, want %t", i, d, got, tc.want[i])
				}
			}
		})
	}
}

// Threat: a flood of distinct keys (requesters, VMs) grows the limiter
// without bound. Defence: at most max keys; full buckets are forgotten
// first, and a new key is refused while every remembered one is in use.
func TestLimiterMemoryBounded(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	const maxKeys = 100
	l := newLimiter(1, 2, maxKeys)
	for i := range 10 * maxKeys {
		l.allow(fmt.Sprint("key-", i), t0)
		if n := l.len(); n > maxKeys {
			t.Fatalf("after %d keys the limiter remembers %d, want at most %d", i+1, n, maxKeys)
		}
	}
	// Every remembered key has used a token: a new key is refused now ...
	if l.allow("newcomer", t0) {
		t.Fatal("a new key was let in while every remembered key is in use")
	}
	// ... and let in once the others have filled up again.
	if !l.allow("newcomer", t0.Add(2*time.Second)) {
		t.Fatal("a new key is refused after the remembered ones filled up")
	}
	if n := l.len(); n != 1 {
		t.Fatalf("the limiter remembers %d keys after the sweep, want 1", n)
	}
	// A remembered key keeps its state: it cannot reset itself by waiting
	// for others to be swept.
	l2 := newLimiter(0.001, 1, 2)
	if !l2.allow("a", t0) || l2.allow("a", t0) {
		t.Fatal("burst of 1")
	}
	l2.allow("b", t0)
	if l2.allow("a", t0.Add(time.Second)) {
		t.Fatal("a key's used bucket was forgotten")
	}
}
