package collateral

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// Fetch backoff. While AMD KDS or Intel PCS cannot answer (down, rate
// limiting), verifications needing collateral must not each wait for a
// fetch nor hammer the service: after a fetch of a collateral key fails,
// further needs of that key within a window answer at once with a
// *BackoffError. The window starts at backoffBase and doubles with
// every failure in a row up to backoffMax; a success forgets the failures.
// A Retry-After header on 429 or 503 answers lengthens the window to what
// the server asks (at most retryAfterMax) and, since such an answer speaks
// for the whole server, holds back every fetch from that host as well.
const (
	backoffBase    = 5 * time.Second
	backoffMax     = 5 * time.Minute
	retryAfterMax  = time.Hour
	backoffEntries = 1024 // bound of remembered failures per Fetcher
)

// BackoffError is the error of a fetch of collateral not attempted
// because a recent fetch of it failed (or its server asked to be left
// alone). It unwraps to the error of that fetch.
type BackoffError struct {
	// URL is the collateral's URL.
	URL string
	// Until is when the next fetch may be tried.
	Until time.Time
	// Err is why the last fetch failed.
	Err error
}

func (e *BackoffError) Error() string {
	return fmt.Sprintf("backing off until %s after a failed fetch: %v", e.Until.UTC().Format(time.RFC3339), e.Err)
}

func (e *BackoffError) Unwrap() error { return e.Err }

// httpStatusError is a non-200 answer of AMD KDS or Intel PCS.
type httpStatusError struct {
	url    string
	status string
	code   int
	// retryAfter is the Retry-After of a 429 or 503 answer (0: none).
	retryAfter time.Duration
}

func (e *httpStatusError) Error() string {
	if e.retryAfter > 0 {
		return fmt.Sprintf("GET %s: %s (Retry-After %s)", e.url, e.status, e.retryAfter)
	}
	return fmt.Sprintf("GET %s: %s", e.url, e.status)
}

// newHTTPStatusError describes resp, reading Retry-After (seconds or an
// HTTP date) of 429 and 503 answers.
func newHTTPStatusError(u string, resp *http.Response, now time.Time) *httpStatusError {
	e := &httpStatusError{url: u, status: resp.Status, code: resp.StatusCode}
	if e.code != http.StatusTooManyRequests && e.code != http.StatusServiceUnavailable {
		return e
	}
	ra := resp.Header.Get("Retry-After")
	if s, err := strconv.Atoi(ra); err == nil && s > 0 {
		e.retryAfter = time.Duration(min(s, int(retryAfterMax/time.Second))) * time.Second
	} else if t, err := http.ParseTime(ra); err == nil && t.After(now) {
		e.retryAfter = min(t.Sub(now), retryAfterMax)
	}
	return e
}

// backoff remembers failed fetches per collateral key and per host.
// The zero value is ready; safe for concurrent use.
type backoff struct {
	mu sync.Mutex
	m  map[string]*backoffEntry // collateral key or hostKey(host)
}

type backoffEntry struct {
	until time.Time
	// step is the exponential window of the last failure.
	step time.Duration
	err  error
}

func hostKey(u string) string {
	if p, err := url.Parse(u); err == nil && p.Host != "" {
		return "host " + p.Host
	}
	return ""
}

// check returns a *BackoffError when key or u's host is backing off
// at now.
func (b *backoff) check(key, u string, now time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.m) == 0 {
		return nil
	}
	var worst *backoffEntry
	for _, k := range [...]string{key, hostKey(u)} {
		if e := b.m[k]; e != nil && now.Before(e.until) && (worst == nil || e.until.After(worst.until)) {
			worst = e
		}
	}
	if worst == nil {
		return nil
	}
	return &BackoffError{URL: u, Until: worst.until, Err: worst.err}
}

// failed records that fetching key from u failed with err at now.
func (b *backoff) failed(key, u string, err error, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.m == nil {
		b.m = make(map[string]*backoffEntry)
	}
	e := b.m[key]
	if e == nil {
		e = &backoffEntry{}
		b.makeRoom(now)
		b.m[key] = e
	}
	e.step = min(max(2*e.step, backoffBase), backoffMax)
	wait := e.step
	var se *httpStatusError
	if errors.As(err, &se) && se.retryAfter > wait {
		wait = se.retryAfter
	}
	e.until, e.err = now.Add(wait), err
	if se != nil && (se.code == http.StatusTooManyRequests || se.code == http.StatusServiceUnavailable) {
		if hk := hostKey(u); hk != "" {
			h := b.m[hk]
			if h == nil {
				h = &backoffEntry{}
				b.makeRoom(now)
				b.m[hk] = h
			}
			if e.until.After(h.until) {
				h.until, h.err = e.until, err
			}
		}
	}
}

// succeeded forgets the failures of key and of u's host.
func (b *backoff) succeeded(key, u string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.m) == 0 {
		return
	}
	delete(b.m, key)
	delete(b.m, hostKey(u))
}

// makeRoom makes room for an entry: when backoffEntries are held, it drops
// those whose window has passed, then the one ending first.
func (b *backoff) makeRoom(now time.Time) {
	if len(b.m) < backoffEntries {
		return
	}
	for k, e := range b.m {
		if !now.Before(e.until) {
			delete(b.m, k)
		}
	}
	for len(b.m) >= backoffEntries {
		first := ""
		for k, e := range b.m {
			if first == "" || e.until.Before(b.m[first].until) {
				first = k
			}
		}
		delete(b.m, first)
	}
}
