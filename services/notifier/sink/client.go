package sink

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// Client limits.
const (
	// DefaultTimeout bounds one request, the response body included.
	DefaultTimeout = 15 * time.Second
	// MaxResponseBody is how much of a response body is read.
	MaxResponseBody = 64 << 10
	// MaxRetryAfter caps a receiver's Retry-After.
	MaxRetryAfter = time.Hour
	// DefaultUserAgent is the User-Agent when ClientOptions gives none.
	DefaultUserAgent = "vigil-notifier/1"
)

// ClientOptions configure NewClient.
type ClientOptions struct {
	// AllowPrivate allows plain HTTP and addresses that are loopback,
	// private, link-local, CGNAT, ... (dev and tests only).
	AllowPrivate bool
	// Timeout bounds one request, the response body included; 0 means
	// DefaultTimeout.
	Timeout time.Duration
	// UserAgent is sent with every request; "" means DefaultUserAgent.
	UserAgent string
}

// Client is the one safe HTTP client every sink uses: no redirects
// followed, no proxy, a timeout, response bodies read at most
// MaxResponseBody, HTTPS only and non-public addresses refused at dial time
// (the address actually dialled is checked, so DNS rebinding cannot get
// around it) unless AllowPrivate. It is safe for concurrent use; share one.
type Client struct {
	hc           *http.Client
	allowPrivate bool
	userAgent    string
}

// NewClient returns a Client.
func NewClient(opts ClientOptions) *Client {
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.UserAgent == "" {
		opts.UserAgent = DefaultUserAgent
	}
	dialer := &net.Dialer{Timeout: opts.Timeout, KeepAlive: 30 * time.Second}
	if !opts.AllowPrivate {
		dialer.Control = refusePrivate
	}
	tr := &http.Transport{
		Proxy:                  nil, // a proxy would dial for us, past the address check
		DialContext:            dialer.DialContext,
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           100,
		MaxIdleConnsPerHost:    16,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ResponseHeaderTimeout:  opts.Timeout,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	return &Client{
		hc: &http.Client{
			Transport: tr,
			Timeout:   opts.Timeout,
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
		allowPrivate: opts.AllowPrivate,
		userAgent:    opts.UserAgent,
	}
}

// AllowPrivate reports whether the client allows plain HTTP and non-public
// addresses.
func (c *Client) AllowPrivate() bool { return c.allowPrivate }

// CloseIdleConnections closes idle connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// Response is what a receiver answered: its status, headers and at most
// MaxResponseBody bytes of its body.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// CheckURL checks that raw is an absolute http(s) URL the client may send
// to: HTTPS unless AllowPrivate, a host, no user info. Errors wrap
// ErrRefused or ErrInvalidSpec and never show the URL's path or query.
func (c *Client) CheckURL(raw string) (*url.URL, error) {
	return checkURL(raw, c.allowPrivate)
}

func checkURL(raw string, allowPrivate bool) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: the URL does not parse", ErrInvalidSpec)
	}
	switch u.Scheme {
	case "https":
	case "http":
		if !allowPrivate {
			return nil, fmt.Errorf("%w: %s: plain http (https required)", ErrRefused, RedactURL(raw))
		}
	default:
		return nil, fmt.Errorf("%w: the URL must be https", ErrInvalidSpec)
	}
	if u.Host == "" || u.Hostname() == "" {
		return nil, fmt.Errorf("%w: the URL has no host", ErrInvalidSpec)
	}
	if u.User != nil {
		return nil, fmt.Errorf("%w: the URL must not carry user info", ErrInvalidSpec)
	}
	if !allowPrivate {
		// Literal addresses are refused early; names are checked at dial time.
		if a, err := netip.ParseAddr(strings.Trim(u.Hostname(), "[]")); err == nil {
			if err := checkAddr(a); err != nil {
				return nil, err
			}
		}
	}
	return u, nil
}

// Do sends a request with body and returns the receiver's answer. Any 2xx
// is success; anything else is an *Error (Kind by status, RetryAfter from
// Retry-After on 429 and 503; a 3xx is Reject: redirects are not
// followed). Network errors and timeouts are *Error of Kind Retry, refused
// destinations of Kind Reject. Error messages never show the URL's path or
// query (Slack and Teams webhook URLs are credentials).
func (c *Client) Do(ctx context.Context, method, rawURL string, header http.Header, body []byte) (*Response, error) {
	u, err := c.CheckURL(rawURL)
	if err != nil {
		return nil, &Error{Kind: Reject, Err: err}
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, &Error{Kind: Reject, Err: fmt.Errorf("%w: %s: cannot make the request", ErrInvalidSpec, RedactURL(rawURL))}
	}
	for k, vs := range header {
		req.Header[k] = vs
	}
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(ctx, rawURL, err)
	}
	defer resp.Body.Close()
	b, rerr := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBody))
	// Drain a little more so the connection can be reused; never all of it.
	_, _ = io.CopyN(io.Discard, resp.Body, MaxResponseBody)
	r := &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return r, nil // the body may be cut short: success anyway
	}
	e := &Error{Status: resp.StatusCode, Kind: KindOfStatus(resp.StatusCode)}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		if d, ok := ParseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			e.RetryAfter = d
		}
	}
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		e.Err = fmt.Errorf("%w: %s answered %d", ErrRedirect, RedactURL(rawURL), resp.StatusCode)
	case rerr != nil:
		e.Err = fmt.Errorf("%s: reading the answer: %w", RedactURL(rawURL), rerr)
	default:
		e.Err = fmt.Errorf("%s answered: %s", RedactURL(rawURL), snippet(b))
	}
	return r, e
}

// jsonPoster is a sink that posts each notification as one JSON document
// (message renders it) to a URL that is its only credential: Slack's and
// Teams' incoming webhooks. It takes no settings and no secrets.
type jsonPoster[M any] struct {
	c        *Client
	url      string
	protocol string
	message  func(Notification) M
}

func newJSONPoster[M any](spec Spec, c *Client, protocol string, message func(Notification) M) (*jsonPoster[M], error) {
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, false, false); err != nil {
		return nil, err
	}
	return &jsonPoster[M]{c: c, url: spec.URL, protocol: protocol, message: message}, nil
}

func (p *jsonPoster[M]) Protocol() string { return p.protocol }

// Deliver posts n's message; any 2xx is success (Teams Workflows answer
// 202), and errors never show the URL's path or query.
func (p *jsonPoster[M]) Deliver(ctx context.Context, n Notification) error {
	if err := checkNotification(n); err != nil {
		return err
	}
	body, err := json.Marshal(p.message(n))
	if err != nil {
		return &Error{Kind: Reject, Err: fmt.Errorf("%s: encoding: %w", p.protocol, err)}
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	_, err = p.c.Do(ctx, http.MethodPost, p.url, h, body)
	return scrub(err, urlSecrets(p.url)...)
}

// transportError turns a client error into an *Error without the URL.
func transportError(ctx context.Context, rawURL string, err error) *Error {
	cause := err
	var ue *url.Error
	if errors.As(err, &ue) {
		cause = ue.Err // url.Error's message has the whole URL
	}
	if errors.Is(cause, ErrRefused) {
		return &Error{Kind: Reject, Err: fmt.Errorf("%s: %w", RedactURL(rawURL), cause)}
	}
	if ctx.Err() != nil {
		cause = fmt.Errorf("%w (%w)", ctx.Err(), cause)
	}
	return &Error{Kind: Retry, Err: fmt.Errorf("%s: %w", RedactURL(rawURL), cause)}
}

// snippet is a short, printable excerpt of a receiver's answer.
func snippet(b []byte) string {
	const max = 200
	s := strings.ToValidUTF8(string(b), "?")
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	s = strings.TrimSpace(s)
	if len(s) > max {
		s = s[:max] + "..."
	}
	if s == "" {
		return "(no body)"
	}
	return strings.ToValidUTF8(s, "")
}

// RedactURL shows a URL's scheme and host only: webhook URLs of Slack and
// Teams carry their credential in the path or query.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		if raw == "" {
			return ""
		}
		return "(redacted URL)"
	}
	return u.Scheme + "://" + u.Host + "/..."
}

// refusePrivate is the dialer's Control: it runs for every address actually
// dialled, after name resolution.
func refusePrivate(network, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("%w: unexpected address %q", ErrRefused, address)
	}
	return checkAddr(ap.Addr())
}

var (
	cgnat     = netip.MustParsePrefix("100.64.0.0/10")
	thisNet   = netip.MustParsePrefix("0.0.0.0/8")
	reserved  = netip.MustParsePrefix("240.0.0.0/4")
	benchmark = netip.MustParsePrefix("198.18.0.0/15")
	ietf      = netip.MustParsePrefix("192.0.0.0/24")
	nat64     = netip.MustParsePrefix("64:ff9b::/96")
	nat64l    = netip.MustParsePrefix("64:ff9b:1::/48")
	sixToFour = netip.MustParsePrefix("2002::/16")
	imds      = netip.MustParseAddr("169.254.169.254")
	wire      = netip.MustParseAddr("168.63.129.16")
)

// checkAddr refuses addresses that are not public unicast: loopback,
// private (RFC 1918, ULA), link-local, CGNAT, unspecified, multicast,
// broadcast and reserved ranges, Azure's IMDS and wireserver, and IPv6
// forms embedding such an IPv4 address.
func checkAddr(a netip.Addr) error {
	a = a.Unmap()
	if reason := nonPublic(a); reason != "" {
		return fmt.Errorf("%w: %s is %s", ErrRefused, a, reason)
	}
	if a.Is6() {
		b := a.As16()
		var v4 netip.Addr
		switch {
		case nat64.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[12:16]))
		case sixToFour.Contains(a):
			v4 = netip.AddrFrom4([4]byte(b[2:6]))
		}
		if v4.IsValid() {
			if reason := nonPublic(v4); reason != "" {
				return fmt.Errorf("%w: %s embeds %s, which is %s", ErrRefused, a, v4, reason)
			}
		}
		if nat64l.Contains(a) {
			return fmt.Errorf("%w: %s is a local-use NAT64 address", ErrRefused, a)
		}
	}
	return nil
}

func nonPublic(a netip.Addr) string {
	switch {
	case !a.IsValid():
		return "invalid"
	case a == imds:
		return "the Azure instance metadata service"
	case a == wire:
		return "the Azure wireserver"
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsLinkLocalUnicast():
		return "link-local"
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return "multicast"
	}
	if a.Is4() {
		switch {
		case cgnat.Contains(a):
			return "shared (CGNAT) address space"
		case thisNet.Contains(a):
			return "\"this network\""
		case reserved.Contains(a): // 255.255.255.255 included
			return "reserved"
		case benchmark.Contains(a):
			return "benchmarking space"
		case ietf.Contains(a):
			return "IETF protocol assignments"
		}
	}
	return ""
}
