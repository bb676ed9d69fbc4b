package auditor

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// TestEncodeCarvesEntriesFromBlocks checks that entries encoded into shared
// blocks are exactly EncodeMessage's, stay intact while later ones are
// encoded, and cannot grow into each other, including an entry whose
// canonical form outgrows the room reserved for it.
func TestEncodeCarvesEntriesFromBlocks(t *testing.T) {
	event := func(data string) []byte {
		return []byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","data":` + data + `}`)
	}
	// 1e20 is 100000000000000000000 in canonical form: 17 bytes longer.
	expanding := event("[" + strings.TrimSuffix(strings.Repeat("1e20,", 40), ",") + "]")
	bodies := [][]byte{expanding, event(`{"b":1,"a":2}`), []byte("not json"), event(`"` + strings.Repeat("x", 3000) + `"`)}
	var msgs []auditlog.Message
	for i := range 400 {
		msgs = append(msgs, auditlog.Message{Stream: events.StreamEvents, Seq: uint64(i + 1), Subject: "vigil.events.policy.p",
			Stored: time.Unix(int64(i), 0), Body: bodies[i%len(bodies)]})
	}
	for _, room := range []int{0, 100, 1000, 4000} {
		w := &writer{}
		// Start with a block whose free room is just what encode reserves
		// for the expanding event plus room.
		w.block = make([]byte, 0, 256+len(events.StreamEvents)+len("vigil.events.policy.p")+len(expanding)+room)
		entries := make([][]byte, len(msgs))
		for i, m := range msgs {
			entries[i] = w.encode(m)
			if cap(entries[i]) != len(entries[i]) {
				t.Fatalf("room %d, entry %d: capacity %d beyond its length %d", room, i, cap(entries[i]), len(entries[i]))
			}
		}
		for i, m := range msgs {
			if want := auditlog.EncodeMessage(m); !bytes.Equal(entries[i], want) {
				t.Fatalf("room %d, entry %d:\n got %.200s\nwant %.200s", room, i, entries[i], want)
			}
		}
	}
}

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

// TestAuditorCatchesUpBacklog starts an auditor on a backlog: batches wait
// for the messages the stream still holds, and the log gets every one
// exactly once, in order.
func TestAuditorCatchesUpBacklog(t *testing.T) {
	h := newHarness(t)
	const n = 5000
	h.publish(0, n)
	stop := h.start()
	h.waitCheckpoint(n)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	recs, _ := h.records()
	checkExactlyOnce(t, recs, n)
}
