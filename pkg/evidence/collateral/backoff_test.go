package collateral

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestFetchBackoff(t *testing.T) {
	const (
		kdsA = "https://kds.example/vcek/v1/Milan/aa"
		kdsB = "https://kds.example/vcek/v1/Milan/bb"
		pcs  = "https://pcs.example/tdx/certification/v4/qe/identity"
	)
	down := errors.New("connection refused")
	status := func(code int, retryAfter time.Duration) error {
		return &httpStatusError{url: kdsA, status: http.StatusText(code), code: code, retryAfter: retryAfter}
	}
	// step is one event at a time (seconds from the start): a failed fetch
	// (err), a successful one (ok), or a check that key (from u) backs off
	// until the given second (-1: does not back off).
	type step struct {
		at      int
		key, u  string
		err     error
		ok      bool
		checkTo int
	}
	fail := func(at int, key, u string, err error) step { return step{at: at, key: key, u: u, err: err} }
	ok := func(at int, key, u string) step { return step{at: at, key: key, u: u, ok: true} }
	check := func(at int, key, u string, until int) step { return step{at: at, key: key, u: u, checkTo: until} }
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{name: "never failed", steps: []step{check(0, "a", kdsA, -1)}},
		{name: "doubling to the cap", steps: []step{
			fail(0, "a", kdsA, down), check(0, "a", kdsA, 5), check(4, "a", kdsA, 5), check(5, "a", kdsA, -1),
			fail(5, "a", kdsA, down), check(6, "a", kdsA, 15),
			fail(15, "a", kdsA, down), check(15, "a", kdsA, 35),
			fail(35, "a", kdsA, down), fail(75, "a", kdsA, down), fail(155, "a", kdsA, down), check(155, "a", kdsA, 315),
			fail(315, "a", kdsA, down), check(315, "a", kdsA, 615), // capped at 5 min
			fail(615, "a", kdsA, down), check(615, "a", kdsA, 915),
		}},
		{name: "per key", steps: []step{
			fail(0, "a", kdsA, down), check(1, "b", kdsB, -1), check(1, "q", pcs, -1),
			fail(1, "b", kdsB, status(http.StatusNotFound, 0)), check(1, "b", kdsB, 6), check(1, "a", kdsA, 5),
		}},
		{name: "success resets", steps: []step{
			fail(0, "a", kdsA, down), fail(5, "a", kdsA, down), check(5, "a", kdsA, 15),
			ok(15, "a", kdsA), check(15, "a", kdsA, -1),
			fail(20, "a", kdsA, down), check(20, "a", kdsA, 25),
		}},
		{name: "Retry-After on 429 holds back the host", steps: []step{
			fail(0, "a", kdsA, status(http.StatusTooManyRequests, 120*time.Second)),
			check(0, "a", kdsA, 120), check(60, "b", kdsB, 120), check(60, "q", pcs, -1), check(120, "b", kdsB, -1),
		}},
		{name: "503 without Retry-After holds back the host", steps: []step{
			fail(0, "a", kdsA, status(http.StatusServiceUnavailable, 0)), check(1, "b", kdsB, 5),
		}},
		{name: "Retry-After shorter than the backoff", steps: []step{
			fail(0, "a", kdsA, down), fail(5, "a", kdsA, status(http.StatusTooManyRequests, time.Second)), check(5, "a", kdsA, 15),
		}},
		{name: "success on the host ends its hold", steps: []step{
			fail(0, "a", kdsA, status(http.StatusTooManyRequests, 60*time.Second)), ok(60, "a", kdsA), check(60, "b", kdsB, -1),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b backoff
			t0 := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
			at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
			for i, s := range tc.steps {
				switch {
				case s.err != nil:
					b.failed(s.key, s.u, s.err, at(s.at))
				case s.ok:
					b.succeeded(s.key, s.u)
				default:
					err := b.check(s.key, s.u, at(s.at))
					var be *BackoffError
					if s.checkTo < 0 {
						if err != nil {
							t.Fatalf("step %d: %v, want no backoff", i, err)
						}
						continue
					}
					if !errors.As(err, &be) || !be.Until.Equal(at(s.checkTo)) || be.URL != s.u || be.Err == nil {
						t.Fatalf("step %d: %v, want backing off until %v", i, err, at(s.checkTo))
					}
				}
			}
		})
	}
}

func TestBackoffError(t *testing.T) {
	last := fmt.Errorf("AMD KDS: %w", &httpStatusError{url: "https://kds.example/x", status: "429 Too Many Requests", code: 429, retryAfter: time.Minute})
	err := fmt.Errorf("VCEK: %w", &BackoffError{URL: "https://kds.example/x", Until: time.Date(2026, 11, 27, 8, 1, 0, 0, time.UTC), Err: last})
	var se *httpStatusError
	if !errors.As(err, &se) || se.code != 429 {
		t.Fatalf("%v does not unwrap to the last failure", err)
	}
	for _, want := range []string{"until 2026-11-27T08:01:00Z", "429 Too Many Requests", "Retry-After 1m0s"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q lacks %q", err, want)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 8, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		code int
		hdr  string
		want time.Duration
	}{
		{429, "120", 120 * time.Second},
		{503, "7", 7 * time.Second},
		{429, now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{429, now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{429, "999999", retryAfterMax},
		{429, "soon", 0},
		{429, "-5", 0},
		{429, "", 0},
		{500, "120", 0},
	} {
		resp := &http.Response{StatusCode: tc.code, Status: http.StatusText(tc.code), Header: http.Header{"Retry-After": {tc.hdr}}}
		if got := newHTTPStatusError("https://x", resp, now).retryAfter; got != tc.want {
			t.Errorf("%d Retry-After %q: %v, want %v", tc.code, tc.hdr, got, tc.want)
		}
	}
}

func TestFetchBackoffBounded(t *testing.T) {
	var b backoff
	now := time.Now()
	for i := range 3 * backoffEntries {
		b.failed(fmt.Sprint("k", i), "https://kds.example/", errors.New("down"), now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(b.m); n > backoffEntries {
		t.Fatalf("%d entries, want at most %d", n, backoffEntries)
	}
	// The latest failures are remembered.
	if b.check(fmt.Sprint("k", 3*backoffEntries-1), "https://other.example/", now) == nil {
		t.Fatal("latest failure forgotten")
	}
}
