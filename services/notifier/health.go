package notifier

import (
	"context"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// AlertCodeUnhealthy is the code of the alert that says a subscription
// has failed for longer than Config.UnhealthyAfter (resolved when it
// delivers again).
const AlertCodeUnhealthy = "notifier.subscription_unhealthy"

// healthLoop writes the workers' health, marks subscriptions unhealthy
// and re-sends firing alerts to Alertmanagers.
func (m *manager) healthLoop(ctx context.Context) error {
	t := time.NewTicker(m.cfg.HealthInterval)
	defer t.Stop()
	lastResend := time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := time.Now()
		resend := now.Sub(lastResend) >= m.cfg.AlertmanagerResend
		if resend {
			lastResend = now
		}
		for _, w := range m.allWorkers() {
			w.checkUnhealthy(ctx, now)
			w.flushHealth(ctx)
			if resend && w.sub.Protocol == sink.ProtocolAlertmanager {
				w.resendFiring(ctx)
			}
		}
	}
}

func (w *worker) checkUnhealthy(ctx context.Context, now time.Time) {
	w.mu.Lock()
	h := w.health
	raise := !h.Unhealthy && !h.FailingSince.IsZero() && now.Sub(h.FailingSince) >= w.m.cfg.UnhealthyAfter
	if raise {
		w.health.Unhealthy = true
		w.dirty = true
	}
	w.mu.Unlock()
	if raise {
		w.flushHealth(ctx)
		w.m.raiseUnhealthy(ctx, w.sub, events.AlertFiring,
			fmt.Sprintf("alert subscription %s (%s to %s) has failed since %s (%d attempts; last error: %s)",
				w.sub.ID, w.sub.Protocol, w.sub.Sink, h.FailingSince.UTC().Format(time.RFC3339), h.ConsecutiveFailures, h.LastError))
	}
}

// raiseUnhealthy publishes the firing or resolve of sub's unhealthy alert:
// to every other subscription (a subscription is not told about itself).
func (m *manager) raiseUnhealthy(ctx context.Context, sub Subscription, state events.AlertState, msg string) {
	a := events.Alert{Severity: events.SeverityHigh, Code: AlertCodeUnhealthy, Message: msg, Source: "vigil-notifier",
		At: time.Now().UTC(), Key: unhealthyKey(sub.ID), State: state}
	if state == events.AlertResolved {
		a.Message = fmt.Sprintf("alert subscription %s delivers again", sub.ID)
	}
	if err := m.conn.PublishAlert(ctx, "vigil-notifier", "", a); err != nil {
		m.log.ErrorContext(ctx, "publish the unhealthy subscription alert", "subscription", sub.ID, "err", err)
	}
}

// resendFiring re-sends the firing alerts to an Alertmanager, which
// forgets an alert not re-sent within its resolve_timeout. One attempt
// each: the next round retries.
func (w *worker) resendFiring(ctx context.Context) {
	w.mu.Lock()
	ns := make([]sink.Notification, 0, len(w.firing))
	for _, n := range w.firing {
		ns = append(ns, n)
	}
	w.mu.Unlock()
	for _, n := range ns {
		n.Time = time.Now().UTC()
		if err := w.sink.Deliver(ctx, n); err != nil {
			w.m.log.WarnContext(ctx, "re-send a firing alert to Alertmanager", "subscription", w.sub.ID, "key", n.Key, "err", err)
		}
	}
}
