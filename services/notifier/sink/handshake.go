package sink

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// CloudEvents webhook validation handshake headers (CloudEvents "HTTP 1.1
// Web Hooks for Event Delivery", section 4).
const (
	HeaderRequestOrigin = "WebHook-Request-Origin"
	HeaderAllowedOrigin = "WebHook-Allowed-Origin"
	HeaderRequestRate   = "WebHook-Request-Rate"
	HeaderAllowedRate   = "WebHook-Allowed-Rate"
)

// ErrNoConsent: the receiver did not grant permission to deliver.
var ErrNoConsent = errors.New("sink: the receiver did not consent to deliveries (CloudEvents webhook handshake)")

// Handshake runs the CloudEvents webhook validation handshake against url:
// an OPTIONS request with WebHook-Request-Origin: origin. The receiver
// consents only by a 2xx answer with WebHook-Allowed-Origin equal to origin
// or "*"; anything else is an error wrapping ErrNoConsent (or the
// delivery's *Error when the request itself failed).
// WebHook-Request-Callback is not used.
func Handshake(ctx context.Context, c *Client, url, origin string) error {
	if origin == "" {
		return fmt.Errorf("%w: handshake: no origin", ErrInvalidSpec)
	}
	h := http.Header{}
	h.Set(HeaderRequestOrigin, origin)
	resp, err := c.Do(ctx, http.MethodOptions, url, h, nil)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoConsent, err)
	}
	allowed := resp.Header.Values(HeaderAllowedOrigin)
	if len(allowed) == 0 {
		return fmt.Errorf("%w: %s answered %d without %s", ErrNoConsent, RedactURL(url), resp.Status, HeaderAllowedOrigin)
	}
	for _, a := range allowed {
		a = strings.TrimSpace(a)
		if a == "*" || strings.EqualFold(a, origin) {
			return nil
		}
	}
	return fmt.Errorf("%w: %s allows origin %q, not %q", ErrNoConsent, RedactURL(url), snippet([]byte(strings.Join(allowed, ","))), origin)
}
