package keyguard

import (
	"sync"
	"time"
)

// limiter is a token bucket per key (a VM, a requester) that remembers at
// most max keys, so that its memory is bounded whatever the keys.
type limiter struct {
	rate  float64 // tokens added per second
	burst float64 // bucket size
	max   int     // keys remembered at most

	mu      sync.Mutex
	buckets map[string]tokens
}

type tokens struct {
	n  float64
	at time.Time
}

func newLimiter(rate float64, burst, maxKeys int) *limiter {
	return &limiter{rate: rate, burst: float64(burst), max: maxKeys, buckets: map[string]tokens{}}
}

// allow takes a token for key at now and reports whether there was one.
// When max keys are remembered, the buckets that have filled up again are
// forgotten (a full bucket is what an unknown key starts with); when none
// has, a new key is refused until one has.
func (l *limiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[key]
	switch {
	case ok:
		b.n = min(l.burst, b.n+now.Sub(b.at).Seconds()*l.rate)
	case len(l.buckets) >= l.max && l.sweep(now) == 0:
		return false
	default:
		b.n = l.burst
	}
	b.at = now
	if b.n < 1 {
		l.buckets[key] = b
		return false
	}
	b.n--
	l.buckets[key] = b
	return true
}

// sweep forgets the buckets that are full at now and returns how many.
func (l *limiter) sweep(now time.Time) int {
	n := 0
	for k, b := range l.buckets {
		if b.n+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
			n++
		}
	}
	return n
}

// len returns how many keys are remembered.
func (l *limiter) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}
