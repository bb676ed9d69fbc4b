package telemetry

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"go.opentelemetry.io/otel/trace"
)

// Log attribute keys added by the trace handler.
const (
	KeyTraceID = "trace_id"
	KeySpanID  = "span_id"
	KeyService = "service"
)

// Logger returns a JSON logger writing to w (os.Stderr when nil) at level
// (slog.LevelInfo when nil). Every record carries "service" and, when the
// context passed to the *Context logging methods holds a valid span,
// "trace_id" and "span_id" at the top level.
func Logger(service string, w io.Writer, level slog.Leveler) *slog.Logger {
	if w == nil {
		w = os.Stderr
	}
	if level == nil {
		level = slog.LevelInfo
	}
	h := slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
	l := slog.New(NewTraceHandler(h))
	if service != "" {
		l = l.With(KeyService, service)
	}
	return l
}

// ParseLevel reads a log level name: debug, info, warn (warning) or error,
// optionally with an offset as slog prints it ("warn+2").
func ParseLevel(s string) (slog.Level, error) {
	var l slog.Level
	v := strings.ToLower(strings.TrimSpace(s))
	if v == "warning" {
		v = "warn"
	}
	if err := l.UnmarshalText([]byte(v)); err != nil {
		return 0, fmt.Errorf("telemetry: log level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// TraceHandler is a slog.Handler that adds the trace and span ids of the
// record's context to every record before passing it on.
type TraceHandler struct {
	base slog.Handler // the wrapped handler with no group opened
	ops  []handlerOp  // WithAttrs/WithGroup calls made since base
	next slog.Handler // base with ops applied
}

// handlerOp is one WithAttrs (group == "") or WithGroup call.
type handlerOp struct {
	group string
	attrs []slog.Attr
}

// NewTraceHandler wraps h.
func NewTraceHandler(h slog.Handler) *TraceHandler {
	return &TraceHandler{base: h, next: h}
}

// Enabled reports whether the wrapped handler handles level.
func (h *TraceHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle stamps trace_id and span_id from ctx and passes r on.
func (h *TraceHandler) Handle(ctx context.Context, r slog.Record) error {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return h.next.Handle(ctx, r)
	}
	ids := []slog.Attr{
		slog.String(KeyTraceID, sc.TraceID().String()),
		slog.String(KeySpanID, sc.SpanID().String()),
	}
	if !h.hasGroup() {
		r = r.Clone()
		r.AddAttrs(ids...)
		return h.next.Handle(ctx, r)
	}
	// A group is open: record attributes would land inside it. Keep the ids
	// at the top level by adding them before the groups are replayed.
	next := h.base.WithAttrs(ids)
	for _, op := range h.ops {
		if op.group != "" {
			next = next.WithGroup(op.group)
		} else {
			next = next.WithAttrs(op.attrs)
		}
	}
	return next.Handle(ctx, r)
}

func (h *TraceHandler) hasGroup() bool {
	for _, op := range h.ops {
		if op.group != "" {
			return true
		}
	}
	return false
}

// WithAttrs returns a handler whose records carry attrs.
func (h *TraceHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	if len(attrs) == 0 {
		return h
	}
	return h.with(handlerOp{attrs: attrs}, h.next.WithAttrs(attrs))
}

// WithGroup returns a handler that nests later attributes under name.
func (h *TraceHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return h.with(handlerOp{group: name}, h.next.WithGroup(name))
}

func (h *TraceHandler) with(op handlerOp, next slog.Handler) *TraceHandler {
	ops := make([]handlerOp, len(h.ops), len(h.ops)+1)
	copy(ops, h.ops)
	return &TraceHandler{base: h.base, ops: append(ops, op), next: next}
}
