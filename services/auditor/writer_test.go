package auditor

import (
	"testing"

	"github.com/nats-io/nats.go"
)

func TestMayCarryTrace(t *testing.T) {
	w := &writer{traceFields: []string{"traceparent", "tracestate", "baggage"}}
	tests := []struct {
		name string
		h    nats.Header
		want bool
	}{
		{"none", nil, false},
		{"message id only", nats.Header{nats.MsgIdHdr: {"x"}}, false},
		{"traceparent", nats.Header{nats.MsgIdHdr: {"x"}, "traceparent": {"00-x"}}, true},
		{"other case", nats.Header{"TraceParent": {"00-x"}}, true},
		{"baggage", nats.Header{"baggage": {"k=v"}}, true},
	}
	for _, tt := range tests {
		if got := w.mayCarryTrace(tt.h); got != tt.want {
			t.Errorf("%s: mayCarryTrace = %v, want %v", tt.name, got, tt.want)
		}
	}
}
