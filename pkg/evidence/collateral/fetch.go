package collateral

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// maxFetchSize bounds bodies read from AMD KDS and Intel PCS.
const maxFetchSize = 1 << 20

// Fetcher GETs collateral from AMD KDS and Intel PCS, sparing them a
// fleet's worth of requests: concurrent fetches of the same collateral are
// collapsed into one, and after a failure the collateral (and, after a 429
// or 503 answer, its whole host) backs off (see BackoffError). It only
// transports: deciding whether an answer is genuine, and caching it, is
// the caller's (the evidence verifier checks every answer against its
// pinned roots before it stores it in a Cache). Safe for concurrent use.
type Fetcher struct {
	client  *http.Client
	now     func() time.Time
	flight  flightGroup
	backoff backoff
}

// NewFetcher returns a Fetcher using client, with now as the clock of its
// backoff windows.
func NewFetcher(client *http.Client, now func() time.Time) *Fetcher {
	return &Fetcher{client: client, now: now}
}

// Fetch GETs u, the source of the collateral stored under key, unless key
// or u's host is backing off (a *BackoffError), and hands a 200 answer to
// accept, which verifies it (typically caching it too) and returns what
// the caller gets. Concurrent fetches of key are collapsed into one:
// accept runs in the call that fetched, the others get what it returned.
// A failed GET or an answer accept refuses starts or lengthens key's
// backoff (unless the caller cancelled ctx, which says nothing about the
// server; a server that does not answer before ctx's deadline is
// failing); a success ends it.
func (f *Fetcher) Fetch(ctx context.Context, key, u string, accept func(body []byte, hdr http.Header) ([]byte, http.Header, error)) ([]byte, http.Header, error) {
	if err := f.backoff.check(key, u, f.now()); err != nil {
		return nil, nil, err
	}
	return f.flight.do(key, func() ([]byte, http.Header, error) {
		// Again: a fetch that just failed may have ended before this one
		// joined it.
		if err := f.backoff.check(key, u, f.now()); err != nil {
			return nil, nil, err
		}
		body, hdr, err := f.get(ctx, u)
		if err == nil {
			body, hdr, err = accept(body, hdr)
		}
		switch {
		case err == nil:
			f.backoff.succeeded(key, u)
		case !errors.Is(ctx.Err(), context.Canceled):
			f.backoff.failed(key, u, err, f.now())
		}
		return body, hdr, err
	})
}

// get fetches url, returning the body and headers of a 200 answer.
func (f *Fetcher) get(ctx context.Context, url string) (body []byte, hdr http.Header, err error) {
	ctx, span := otel.Tracer("github.com/vigil-cc/vigil/pkg/evidence/collateral").Start(ctx, "evidence.fetch", trace.WithAttributes(attribute.String("url.full", url)))
	defer func() {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, "fetch failed")
		}
		span.End()
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(io.LimitReader(resp.Body, maxFetchSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, nil, newHTTPStatusError(url, resp, f.now())
	}
	if len(body) > maxFetchSize {
		return nil, nil, fmt.Errorf("GET %s: body exceeds %d bytes", url, maxFetchSize)
	}
	return body, resp.Header, nil
}

// flightGroup collapses concurrent fetches of the same key into one.
type flightGroup struct {
	mu    sync.Mutex
	calls map[string]*flightCall
}

type flightCall struct {
	done chan struct{}
	val  []byte
	hdr  http.Header
	err  error
}

func (g *flightGroup) do(key string, fn func() ([]byte, http.Header, error)) ([]byte, http.Header, error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = make(map[string]*flightCall)
	}
	if c, ok := g.calls[key]; ok {
		g.mu.Unlock()
		<-c.done
		return c.val, c.hdr, c.err
	}
	c := &flightCall{done: make(chan struct{})}
	g.calls[key] = c
	g.mu.Unlock()
	c.val, c.hdr, c.err = fn()
	close(c.done)
	g.mu.Lock()
	delete(g.calls, key)
	g.mu.Unlock()
	return c.val, c.hdr, c.err
}
