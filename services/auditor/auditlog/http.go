package auditlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/client"
)

// DefaultHTTPTimeout bounds each request of an HTTPLog unless told
// otherwise.
const DefaultHTTPTimeout = 10 * time.Second

// HTTPLog reads a log served over HTTP(S) in the C2SP tlog-tiles layout,
// such as the auditor's /log/, with Tessera's client.HTTPFetcher. What it
// serves is outside input: each request is bounded in time, and each
// response in size as the files of a Dir are (a checkpoint 64 KiB, a tile
// 8 KiB, an entry bundle 256 maximal entries); everything read must then
// verify against a checkpoint signed by the log's key.
type HTTPLog struct {
	f       *client.HTTPFetcher
	url     string
	timeout time.Duration
}

var _ Reader = (*HTTPLog)(nil)

// HTTPOptions tunes OpenURL.
type HTTPOptions struct {
	// Timeout bounds each request, body included. Default
	// DefaultHTTPTimeout.
	Timeout time.Duration
	// Transport makes the requests (for example with a TLS
	// configuration). Default a clone of http.DefaultTransport.
	Transport http.RoundTripper
}

// OpenURL returns a reader of the log served at rawURL (http or https; the
// directory holding checkpoint and tile/, for the auditor
// http://HOST:PORT/log/).
func OpenURL(rawURL string, opts HTTPOptions) (*HTTPLog, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("auditlog: log URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("auditlog: log URL %q: want http(s)://host/path/", rawURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("auditlog: log URL %q: no query, fragment or user info", rawURL)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultHTTPTimeout
	}
	if opts.Transport == nil {
		opts.Transport = http.DefaultTransport.(*http.Transport).Clone()
	}
	c := &http.Client{Transport: boundedTransport{opts.Transport}}
	f, err := client.NewHTTPFetcher(u, c)
	if err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	return &HTTPLog{f: f, url: u.String(), timeout: opts.Timeout}, nil
}

// URL is the log's address.
func (h *HTTPLog) URL() string { return h.url }

// ReadCheckpoint returns the log's latest checkpoint, unverified.
func (h *HTTPLog) ReadCheckpoint(ctx context.Context) ([]byte, error) {
	return h.read(ctx, layout.CheckpointPath, h.f.ReadCheckpoint)
}

// ReadTile returns a tile; p is its width for a partial tile, 0 for a full
// one (the full one when the partial one has gone).
func (h *HTTPLog) ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error) {
	return h.read(ctx, layout.TilePath(level, index, p), func(ctx context.Context) ([]byte, error) {
		return h.f.ReadTile(ctx, level, index, p)
	})
}

// ReadEntryBundle returns an entry bundle; p as for ReadTile.
func (h *HTTPLog) ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error) {
	return h.read(ctx, layout.EntriesPath(index, p), func(ctx context.Context) ([]byte, error) {
		return h.f.ReadEntryBundle(ctx, index, p)
	})
}

// errSlow is the cause of a read that took longer than the timeout.
var errSlow = errors.New("too slow")

// read runs f within the timeout and names a timeout as such (the fetcher
// reports errors as text).
func (h *HTTPLog) read(ctx context.Context, path string, f func(context.Context) ([]byte, error)) ([]byte, error) {
	rctx, cancel := context.WithTimeoutCause(ctx, h.timeout, errSlow)
	defer cancel()
	b, err := f(rctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(rctx), errSlow) {
		return nil, fmt.Errorf("auditlog: %s%s: no complete response within %v", h.url, path, h.timeout)
	}
	return b, err
}

// boundedTransport limits each response body to the size of the file it
// should be.
type boundedTransport struct{ base http.RoundTripper }

func (b boundedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := b.base.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	limit := int64(maxTileSize)
	switch p := req.URL.Path; {
	case strings.HasSuffix(p, "/"+layout.CheckpointPath):
		limit = maxCheckpointSize
	case strings.Contains(p, "/tile/entries/"):
		limit = maxBundleSize
	}
	resp.Body = &limitedBody{rc: resp.Body, left: limit, limit: limit, path: req.URL.Path, declared: resp.ContentLength}
	return resp, nil
}

// errTooLarge is a response larger than the file it should be.
var errTooLarge = errors.New("response too large")

type limitedBody struct {
	rc          io.ReadCloser
	left, limit int64
	declared    int64
	path        string
}

func (l *limitedBody) Read(p []byte) (int, error) {
	if l.declared > l.limit {
		return 0, fmt.Errorf("%w: %w: %s declares %d bytes, more than the %d it may have", ErrTampered, errTooLarge, l.path, l.declared, l.limit)
	}
	if l.left < 0 {
		return 0, fmt.Errorf("%w: %w: %s is larger than %d bytes", ErrTampered, errTooLarge, l.path, l.limit)
	}
	if int64(len(p)) > l.left+1 {
		p = p[:l.left+1]
	}
	n, err := l.rc.Read(p)
	l.left -= int64(n)
	if l.left < 0 {
		return 0, fmt.Errorf("%w: %w: %s is larger than %d bytes", ErrTampered, errTooLarge, l.path, l.limit)
	}
	return n, err
}

func (l *limitedBody) Close() error { return l.rc.Close() }
