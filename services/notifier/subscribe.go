package notifier

import (
	"context"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// Request asks for a new subscription: what `vigil alerts subscribe`
// and `vigil dev --alert-webhook` give.
type Request struct {
	ID          string
	Description string
	Protocol    string
	URL         string
	Settings    map[string]string
	Secrets     sink.Secrets
	Filters     []Filter
	RateLimit   float64
	Actor       string
	// Origin is the WebHook-Request-Origin of the CloudEvents validation
	// handshake a webhook sink must consent to; "" skips the handshake.
	Origin string
}

// Subscribe checks the sink (sink.New with c: the protocol, settings and
// secrets, and whether c may reach the URL), runs the webhook validation
// handshake, seals the URL and secrets to the notifier's public key and
// stores the subscription. Its consumer starts at the subscription's
// creation: alerts from then on are delivered.
func (s *Store) Subscribe(ctx context.Context, r Request, c *sink.Client) (Subscription, error) {
	if !ValidID(r.ID) {
		return Subscription{}, fmt.Errorf("%w: subscription id %q: lower case letters, digits, - and _, at most 63", ErrInvalid, r.ID)
	}
	spec := sink.Spec{Protocol: r.Protocol, URL: r.URL, Settings: r.Settings, Secrets: r.Secrets}
	if _, err := sink.New(spec, c); err != nil {
		return Subscription{}, err
	}
	if spec.URL == "" && r.Protocol == sink.ProtocolPagerDuty {
		spec.URL = sink.PagerDutyEventsURL
	}
	if r.Protocol == sink.ProtocolWebhook && r.Origin != "" {
		if err := sink.Handshake(ctx, c, spec.URL, r.Origin); err != nil {
			return Subscription{}, fmt.Errorf("webhook validation handshake: %w", err)
		}
	}
	pub, err := s.PublicKey(ctx)
	if err != nil {
		return Subscription{}, err
	}
	sealed, err := SealSpec(pub, r.ID, spec.URL, spec.Secrets)
	if err != nil {
		return Subscription{}, err
	}
	now := time.Now().UTC()
	sub := Subscription{ID: r.ID, Description: r.Description, Sink: sink.RedactURL(spec.URL), Protocol: r.Protocol,
		ProtocolSettings: r.Settings, Filters: r.Filters, Sealed: sealed, RateLimit: r.RateLimit,
		Created: now, Updated: now, Actor: r.Actor}
	if err := s.CreateSubscription(ctx, sub); err != nil {
		return Subscription{}, err
	}
	return sub, nil
}
