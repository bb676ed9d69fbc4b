package evidence

import (
	"context"
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
// *FetchBackoffError. The window starts at backoffBase and doubles with
// every failure in a row up to backoffMax; a success forgets the failures.
// A Retry-After header on 429 or 503 answers lengthens the window to what
// the server asks (at most retryAfterMax) and, since such an answer speaks
// for the whole server, holds back every fetch from that host as well.
const (
	backoffBase    = 5 * time.Second
	backoffMax     = 5 * time.Minute
	retryAfterMax  = time.Hour
	backoffEntries = 1024 // bound of remembered failures per Verifier
)

// FetchBackoffError is the error of a fetch of collateral not attempted
// because a recent fetch of it failed (or its server asked to be left
// alone). It unwraps to the error of that fetch.
type FetchBackoffError struct {
	// URL is the collateral's URL.
	URL string
	// Until is when the next fetch may be tried.
	Until time.Time
	// Err is why the last fetch failed.
	Err error
}

func (e *FetchBackoffError) Error() string {
	return fmt.Sprintf("backing off until %s after a failed fetch: %v", e.Until.UTC().Format(time.RFC3339), e.Err)
}

func (e *FetchBackoffError) Unwrap() error { return e.Err }

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

// fetchBackoff remembers failed fetches per collateral key and per host.
// The zero value is ready; safe for concurrent use.
type fetchBackoff struct {
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

// check returns a *FetchBackoffError when key or u's host is backing off
// at now.
func (b *fetchBackoff) check(key, u string, now time.Time) error {
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
	return &FetchBackoffError{URL: u, Until: worst.until, Err: worst.err}
}

// failed records that fetching key from u failed with err at now.
func (b *fetchBackoff) failed(key, u string, err error, now time.Time) {
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
func (b *fetchBackoff) succeeded(key, u string) {
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
func (b *fetchBackoff) makeRoom(now time.Time) {
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

// fetchGuarded runs fetch, which GETs u for collateral key, unless key or
// u's host is backing off, collapsing concurrent fetches of key into one.
// A failure of fetch starts or lengthens key's backoff (unless the caller
// cancelled ctx, which says nothing about the server; a server that does
// not answer before ctx's deadline is failing); a success ends it.
func (v *Verifier) fetchGuarded(ctx context.Context, key, u string, fetch func() ([]byte, http.Header, error)) ([]byte, http.Header, error) {
	if err := v.backoff.check(key, u, v.now()); err != nil {
		return nil, nil, err
	}
	return v.flight.do(key, func() ([]byte, http.Header, error) {
		// Again: a fetch that just failed may have ended before this one
		// joined it.
		if err := v.backoff.check(key, u, v.now()); err != nil {
			return nil, nil, err
		}
		body, hdr, err := fetch()
		switch {
		case err == nil:
			v.backoff.succeeded(key, u)
		case !errors.Is(ctx.Err(), context.Canceled):
			v.backoff.failed(key, u, err, v.now())
		}
		return body, hdr, err
	})
}
