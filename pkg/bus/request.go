package bus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// Reply headers carrying a handler's refusal.
const (
	HeaderErrorCode    = "Vigil-Error-Code"
	HeaderErrorMessage = "Vigil-Error"
)

// MaxRequestSize bounds a request or reply body.
const MaxRequestSize = 1 << 20

// ErrNoResponders is matched by errors.Is when nobody serves a subject.
var ErrNoResponders = nats.ErrNoResponders

// ReplyError is a refusal sent back by a Serve handler: a machine-readable
// code and a message. Request returns it (match with errors.As).
type ReplyError struct {
	Code    string
	Message string
}

func (e *ReplyError) Error() string {
	if e.Message == "" {
		return e.Code
	}
	return e.Code + ": " + e.Message
}

// Request sends req as JSON to subject and decodes the JSON reply into resp
// (when resp is not nil). The deadline comes from ctx. A refusal by the
// server's handler is returned as *ReplyError; nobody listening as an error
// matching ErrNoResponders; no reply in time as context.DeadlineExceeded.
func (c *Conn) Request(ctx context.Context, subject string, req, resp any) error {
	var body []byte
	switch r := req.(type) {
	case []byte:
		body = r
	default:
		b, err := json.Marshal(req)
		if err != nil {
			return fmt.Errorf("bus: encode request to %s: %w", subject, err)
		}
		body = b
	}
	data, err := c.RequestRaw(ctx, subject, body)
	if err != nil {
		return err
	}
	if resp == nil {
		return nil
	}
	if raw, ok := resp.(*[]byte); ok {
		*raw = data
		return nil
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return fmt.Errorf("bus: decode reply from %s: %w", subject, err)
	}
	return nil
}

// RequestRaw sends body to subject and returns the reply body.
func (c *Conn) RequestRaw(ctx context.Context, subject string, body []byte) ([]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		return nil, fmt.Errorf("bus: request to %s needs a context with a deadline", subject)
	}
	ctx, span := c.tracer.Start(ctx, "request "+subject, trace.WithSpanKind(trace.SpanKindClient))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject))
	}
	m := nats.NewMsg(subject)
	m.Data = body
	InjectTrace(ctx, m.Header)
	reply, err := c.NC.RequestMsgWithContext(ctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		if errors.Is(err, nats.ErrNoResponders) {
			return nil, fmt.Errorf("bus: request to %s: %w", subject, ErrNoResponders)
		}
		return nil, fmt.Errorf("bus: request to %s: %w", subject, err)
	}
	if code := reply.Header.Get(HeaderErrorCode); code != "" {
		re := &ReplyError{Code: code, Message: reply.Header.Get(HeaderErrorMessage)}
		span.SetStatus(codes.Error, re.Error())
		return nil, re
	}
	if len(reply.Data) > MaxRequestSize {
		return nil, fmt.Errorf("bus: reply from %s is %d bytes, over the limit of %d", subject, len(reply.Data), MaxRequestSize)
	}
	return reply.Data, nil
}

// ServeHandler answers one request. Returning a *ReplyError sends that code
// to the requester; any other error is sent as code "internal". The
// request's headers are available through RequestHeader(ctx).
type ServeHandler func(ctx context.Context, data []byte) ([]byte, error)

type requestHeaderKey struct{}

type requestSubjectKey struct{}

// RequestSubject returns the subject of the request a ServeHandler is
// answering ("" outside a handler): with a wildcard subscription, the
// tokens the server let the requester publish on (for example a name its
// permissions pin).
func RequestSubject(ctx context.Context) string {
	s, _ := ctx.Value(requestSubjectKey{}).(string)
	return s
}

// RequestHeader returns the headers of the request a ServeHandler is
// answering (nil outside a handler or when the request had none). Only
// what the NATS server sets itself can be relied on: within one account a
// requester may send any header, including Nats-Request-Info.
func RequestHeader(ctx context.Context) nats.Header {
	h, _ := ctx.Value(requestHeaderKey{}).(nats.Header)
	return h
}

// ServeOption configures Serve.
type ServeOption func(*serveOptions)

type serveOptions struct {
	concurrency int
	replyOK     func(subject, reply string) bool
}

// WithReplyCheck makes Serve answer a request only when allowed(subject,
// reply) holds for the subject it came on and its reply subject: in
// operator mode, when the reply lies under an inbox prefix of a principal
// allowed to make that request (busauth.ReplyAllowed), so that a
// requester cannot have the answer published elsewhere with the
// responder's permissions. Any other request is not handled: it gets no
// answer (the requester times out), and the refusal is logged with the
// subject and reply subject, never the payload, and counted
// (vigil.bus.replies_refused).
func WithReplyCheck(allowed func(subject, reply string) bool) ServeOption {
	return func(o *serveOptions) { o.replyOK = allowed }
}

// OperatorMode reports whether the connection authenticates with a user
// JWT, as every Vigil principal does in operator mode (pkg/busauth): each
// requester then listens on its own inbox prefix, and responders answer
// under it only (WithReplyCheck).
func (c *Conn) OperatorMode() bool { return c.NC != nil && c.NC.Opts.UserJWT != nil }

// WithServeConcurrency bounds the requests handled at once (default 64);
// further requests wait in the subscription's buffer.
func WithServeConcurrency(n int) ServeOption {
	return func(o *serveOptions) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// Serve answers requests on subject (in queue group queue, when not empty)
// until ctx ends or the returned subscription is drained. Each request runs
// in its own goroutine, at most the configured number at once, with the
// requester's trace context.
func (c *Conn) Serve(ctx context.Context, subject, queue string, h ServeHandler, opts ...ServeOption) (*nats.Subscription, error) {
	o := serveOptions{concurrency: 64}
	for _, opt := range opts {
		opt(&o)
	}
	sem := make(chan struct{}, o.concurrency)
	var wg sync.WaitGroup
	handle := func(m *nats.Msg) {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.serveOne(ctx, subject, h, m, o.replyOK)
		}()
	}
	var sub *nats.Subscription
	var err error
	if queue != "" {
		sub, err = c.NC.QueueSubscribe(subject, queue, handle)
	} else {
		sub, err = c.NC.Subscribe(subject, handle)
	}
	if err != nil {
		return nil, fmt.Errorf("bus: serve %s: %w", subject, err)
	}
	// Once Serve returns, requests reach the handler: the server has the
	// subscription (a service says it is ready right after).
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := c.NC.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("bus: serve %s: %w", subject, err)
	}
	go func() {
		<-ctx.Done()
		_ = sub.Drain()
		wg.Wait()
	}()
	return sub, nil
}

func (c *Conn) serveOne(ctx context.Context, subject string, h ServeHandler, m *nats.Msg, replyOK func(subject, reply string) bool) {
	ctx = ExtractTrace(ctx, m.Header)
	ctx = context.WithValue(ctx, requestSubjectKey{}, m.Subject)
	if m.Header != nil {
		ctx = context.WithValue(ctx, requestHeaderKey{}, m.Header)
	}
	ctx, span := c.tracer.Start(ctx, "serve "+subject, trace.WithSpanKind(trace.SpanKindServer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", m.Subject))
	}
	if m.Reply == "" {
		return
	}
	if replyOK != nil && !replyOK(m.Subject, m.Reply) {
		span.SetStatus(codes.Error, "reply subject refused")
		c.metrics.repliesRefused.Add(ctx, 1, metric.WithAttributes(attribute.String("subject", subject)))
		c.log.WarnContext(ctx, "request refused: its reply subject is outside the requester's inbox", "subject", m.Subject, "reply", m.Reply)
		return
	}
	reply := nats.NewMsg(m.Reply)
	var out []byte
	var err error
	if len(m.Data) > MaxRequestSize {
		err = &ReplyError{Code: "too_large", Message: fmt.Sprintf("request is %d bytes, over the limit of %d", len(m.Data), MaxRequestSize)}
	} else {
		out, err = h(ctx, m.Data)
	}
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		var re *ReplyError
		if !errors.As(err, &re) {
			re = &ReplyError{Code: "internal", Message: err.Error()}
		}
		reply.Header.Set(HeaderErrorCode, re.Code)
		reply.Header.Set(HeaderErrorMessage, re.Message)
	} else {
		reply.Data = out
	}
	if err := c.NC.PublishMsg(reply); err != nil {
		c.log.WarnContext(ctx, "send reply", "subject", subject, "err", err)
	}
}
