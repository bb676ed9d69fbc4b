package ingest

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// waitNormalized waits until ingest's VIGIL_RAW consumer has delivered
// every raw event stored so far and had each acknowledged: everything they
// cause has been published and stored.
func (h *harness) waitNormalized(timeout time.Duration) {
	h.t.Helper()
	ctx := h.t.Context()
	deadline := time.Now().Add(timeout)
	for {
		c, err := h.js.Consumer(ctx, events.StreamRaw, ConsumerName)
		var ci *jetstream.ConsumerInfo
		if err == nil {
			ci, err = c.Info(ctx)
		}
		switch {
		case err == nil && ci.NumPending == 0 && ci.NumAckPending == 0:
			return
		case !time.Now().After(deadline):
		case err != nil:
			h.t.Fatalf("raw events not all normalized within %s: %v", timeout, err)
		default:
			h.t.Fatalf("raw events not all normalized within %s: %d to deliver, %d unacknowledged", timeout, ci.NumPending, ci.NumAckPending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
