package notifier

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// replay delivers what administrators put on vigil.alertdlq.replay.<id>
// (vigil alerts dlq replay, vigil alerts test) to subscription id, with
// the usual retries; what fails again is dead-lettered again.
func (m *manager) replay(ctx context.Context) error {
	cfg := jetstream.ConsumerConfig{
		Durable:       busauth.ConsumerNotifierReplay,
		Description:   "vigil-notifier: replays and tests",
		AckPolicy:     jetstream.AckExplicitPolicy,
		FilterSubject: events.SubjectAlertsReplayAll,
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckWait:       m.cfg.AckWait,
		MaxDeliver:    -1,
	}
	return m.conn.Consume(ctx, events.StreamAlertsDLQ, cfg, m.handleReplay,
		bus.WithConcurrency(m.cfg.Concurrency), bus.WithAlertSource("vigil-notifier"), bus.WithRetryCreate())
}

func (m *manager) handleReplay(ctx context.Context, msg *bus.Message) error {
	var dl DeadLetter
	if err := msg.Envelope.Decode(TypeReplay, &dl); err != nil {
		return bus.Permanent(err)
	}
	w := m.worker(dl.Subscription)
	if w == nil {
		// Paused, disabled or unknown: keep it until the subscription
		// runs (a deleted one's replays wait out the stream's age).
		if _, _, err := m.store.Subscription(ctx, dl.Subscription); err != nil {
			return bus.Permanent(fmt.Errorf("replay for subscription %s: %w", dl.Subscription, err))
		}
		return fmt.Errorf("replay for subscription %s, which is not delivering", dl.Subscription)
	}
	dl.Notification.Time = time.Now().UTC()
	return w.send(ctx, dl.Notification, msg.Meta.Timestamp)
}
