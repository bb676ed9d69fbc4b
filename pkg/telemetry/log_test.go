package telemetry

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/sdk/trace"
)

func decodeLines(t *testing.T, b []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("log line is not JSON: %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

func TestLoggerStampsTraceIDs(t *testing.T) {
	tp := trace.NewTracerProvider()
	defer func() { _ = tp.Shutdown(context.Background()) }()
	ctx, span := tp.Tracer("test").Start(context.Background(), "op")
	defer span.End()
	traceID := span.SpanContext().TraceID().String()
	spanID := span.SpanContext().SpanID().String()

	var buf bytes.Buffer
	log := Logger("vigil-test", &buf, slog.LevelDebug)

	log.InfoContext(ctx, "in span", "vm", "abc")
	log.Info("no context")
	log.InfoContext(context.Background(), "context without span")
	log.With("worker", 2).WithGroup("job").InfoContext(ctx, "grouped", "attempt", 1)
	log.WithGroup("a").WithGroup("b").With("x", 1).DebugContext(ctx, "nested")

	lines := decodeLines(t, buf.Bytes())
	if len(lines) != 5 {
		t.Fatalf("%d lines, want 5:\n%s", len(lines), buf.String())
	}
	tests := []struct {
		msg     string
		stamped bool
	}{
		{"in span", true},
		{"no context", false},
		{"context without span", false},
		{"grouped", true},
		{"nested", true},
	}
	for i, tc := range tests {
		l := lines[i]
		if l["msg"] != tc.msg {
			t.Fatalf("line %d msg = %v, want %q", i, l["msg"], tc.msg)
		}
		if l[KeyService] != "vigil-test" {
			t.Errorf("%q: service = %v", tc.msg, l[KeyService])
		}
		if !tc.stamped {
			if _, ok := l[KeyTraceID]; ok {
				t.Errorf("%q: trace_id present without a span", tc.msg)
			}
			continue
		}
		// Top level, even when the logger has groups open.
		if l[KeyTraceID] != traceID || l[KeySpanID] != spanID {
			t.Errorf("%q: trace_id/span_id = %v/%v, want %s/%s", tc.msg, l[KeyTraceID], l[KeySpanID], traceID, spanID)
		}
	}
	// Group structure survives the replay.
	if job, ok := lines[3]["job"].(map[string]any); !ok || job["attempt"] != float64(1) || lines[3]["worker"] != float64(2) {
		t.Errorf("grouped line lost its attributes: %v", lines[3])
	}
	if a, ok := lines[4]["a"].(map[string]any); !ok {
		t.Errorf("nested line lost group a: %v", lines[4])
	} else if b, ok := a["b"].(map[string]any); !ok || b["x"] != float64(1) {
		t.Errorf("nested line lost group a.b: %v", lines[4])
	}
}

func TestLoggerLevel(t *testing.T) {
	var buf bytes.Buffer
	log := Logger("vigil-test", &buf, slog.LevelWarn)
	log.Info("hidden")
	log.Warn("shown")
	if s := buf.String(); strings.Contains(s, "hidden") || !strings.Contains(s, "shown") {
		t.Fatalf("level not applied: %s", s)
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want slog.Level
		err  bool
	}{
		{"debug", slog.LevelDebug, false},
		{"INFO", slog.LevelInfo, false},
		{"warning", slog.LevelWarn, false},
		{"warn", slog.LevelWarn, false},
		{"error", slog.LevelError, false},
		{"warn+2", slog.LevelWarn + 2, false},
		{"loud", 0, true},
		{"", 0, true},
	}
	for _, tc := range tests {
		got, err := ParseLevel(tc.in)
		if (err != nil) != tc.err || (!tc.err && got != tc.want) {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v, err %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
