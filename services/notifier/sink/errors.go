package sink

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Kind says what the caller should do about a failed delivery.
type Kind int

// Kinds. The zero Kind is Retry: an error nobody classified is retried.
const (
	// Retry: 5xx, 408, 429, timeouts, network errors. Try again later
	// (after Error.RetryAfter when it is set).
	Retry Kind = iota
	// Reject: any other 4xx, a redirect, a refused address, a bad request:
	// retrying will not help; dead-letter at once.
	Reject
	// Gone: 410, the receiver is gone for good; disable the subscription.
	Gone
)

func (k Kind) String() string {
	switch k {
	case Retry:
		return "retry"
	case Reject:
		return "reject"
	case Gone:
		return "gone"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error classifies a failed delivery for the core's retry logic.
type Error struct {
	// Status is the HTTP status the receiver answered, 0 if none.
	Status int
	// RetryAfter is the receiver's Retry-After (on 429 and 503), capped at
	// MaxRetryAfter; 0 if it gave none.
	RetryAfter time.Duration
	// Kind is what to do about it.
	Kind Kind
	// Err is the cause.
	Err error
}

func (e *Error) Error() string {
	var s string
	switch {
	case e.Status != 0:
		s = fmt.Sprintf("sink: HTTP %d %s (%s", e.Status, http.StatusText(e.Status), e.Kind)
	default:
		s = fmt.Sprintf("sink: delivery failed (%s", e.Kind)
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	s += ")"
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// Classify tells what to do about err: the Kind of the *Error in its chain;
// otherwise Reject for ErrRefused, ErrInvalidSpec and ErrRedirect, and
// Retry for anything else (timeouts, cancellations, network errors,
// unknown errors: a delivery is never dropped by mistake). Classify(nil) is
// Retry, meaningless.
func Classify(err error) Kind {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Kind
	}
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, ErrInvalidSpec), errors.Is(err, ErrRedirect):
		return Reject
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return Retry
	}
	return Retry
}

// RetryAfterOf returns the receiver's Retry-After carried by err, 0 if none.
func RetryAfterOf(err error) time.Duration {
	if e, ok := errors.AsType[*Error](err); ok {
		return e.RetryAfter
	}
	return 0
}

// KindOfStatus classifies a non-2xx HTTP status.
func KindOfStatus(status int) Kind {
	switch {
	case status == http.StatusGone:
		return Gone
	case status == http.StatusRequestTimeout, status == http.StatusTooManyRequests:
		return Retry
	case status >= 500:
		return Retry
	case status >= 300 && status < 500:
		return Reject
	}
	return Retry // 1xx or nonsense: try again
}

var (
	// ErrInvalidSpec: New refused a Spec.
	ErrInvalidSpec = errors.New("sink: invalid spec")
	// ErrRefused: the client refused the destination (plain HTTP, or an
	// address that is loopback, private, link-local, ... without
	// AllowPrivate).
	ErrRefused = errors.New("sink: destination refused")
	// ErrRedirect: the receiver answered with a redirect, which is not
	// followed.
	ErrRedirect = errors.New("sink: redirect not followed")
)

// scrub removes secrets from err's message: a receiver that echoes the
// request in its error answer (quoted in the *Error) must not put a routing
// key, bearer token or webhook URL into logs and subscription health. The
// classification (Kind, Status, RetryAfter) is kept; err is returned as is
// when it shows none of them.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	e, ok := errors.AsType[*Error](err)
	if !ok || e.Err == nil {
		return err
	}
	msg := e.Err.Error()
	clean := msg
	for _, s := range secrets {
		if len(s) >= 4 {
			clean = strings.ReplaceAll(clean, s, "REDACTED")
		}
	}
	if clean == msg {
		return err
	}
	return &Error{Status: e.Status, RetryAfter: e.RetryAfter, Kind: e.Kind, Err: errors.New(clean)}
}

// urlSecrets are the parts of a webhook URL that may be its credential:
// the path and the query.
func urlSecrets(raw string) []string {
	u, err := url.Parse(raw)
	if err != nil {
		return []string{raw}
	}
	out := []string{u.RawQuery, u.EscapedPath()}
	for _, vs := range u.Query() {
		out = append(out, vs...)
	}
	return out
}
