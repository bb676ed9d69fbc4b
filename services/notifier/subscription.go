package notifier

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// ErrInvalid is matched by errors.Is on a subscription, filter or silence
// that cannot be stored.
var ErrInvalid = errors.New("notifier: invalid")

// Subscription is an alert subscription, shaped after the CloudEvents
// Subscriptions API: an id, the sink, its protocol and protocol settings,
// and filters. It is stored as JSON in the vigil-alert-subscriptions
// bucket under its id. The sink's URL (a Slack or Teams webhook URL is a
// credential) and its secrets are stored only sealed to the notifier's
// public key (Sealed); Sink shows the URL's scheme and host alone.
type Subscription struct {
	ID               string            `json:"id"`
	Description      string            `json:"description,omitempty"`
	Sink             string            `json:"sink"` // redacted: scheme and host
	Protocol         string            `json:"protocol"`
	ProtocolSettings map[string]string `json:"protocolsettings,omitempty"`
	// Filters must all match an alert for it to be delivered (none: every
	// alert). A resolve is delivered when its firing was.
	Filters []Filter `json:"filters,omitempty"`
	// Sealed is the sink's URL and secrets (sealedSpec), sealed with HPKE to
	// the notifier's public key; only the notifier opens it.
	Sealed []byte `json:"sealed"`
	// Paused holds deliveries (they wait on the bus) until resumed.
	Paused bool `json:"paused,omitempty"`
	// ResumedAt is when the subscription was last resumed: a disable (410
	// Gone) recorded before it no longer holds.
	ResumedAt time.Time `json:"resumed_at,omitzero"`
	// RateLimit is the most deliveries per second (0: the protocol's
	// default, Slack and Teams 1/s, others unlimited); alerts beyond it are
	// delivered together as digests.
	RateLimit float64 `json:"rate_limit,omitempty"`
	// StartAt is where its consumer starts on VIGIL_ALERTS.
	Created time.Time `json:"created"`
	Updated time.Time `json:"updated"`
	Actor   string    `json:"actor,omitempty"`
}

// sealedSpec is what Subscription.Sealed holds.
type sealedSpec struct {
	URL     string       `json:"url"`
	Secrets sink.Secrets `json:"secrets,omitzero"`
}

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidID reports whether id can name a subscription: lower case letters,
// digits, '-' and '_', at most 63, starting with a letter or digit (it is
// a NATS subject token and part of a consumer name).
func ValidID(id string) bool { return idPattern.MatchString(id) }

// Validate checks what can be checked without opening Sealed.
func (s Subscription) Validate() error {
	switch {
	case !ValidID(s.ID):
		return fmt.Errorf("%w: subscription id %q: lower case letters, digits, - and _, at most 63", ErrInvalid, s.ID)
	case len(s.Sealed) == 0:
		return fmt.Errorf("%w: subscription %s: no sealed sink", ErrInvalid, s.ID)
	case s.RateLimit < 0:
		return fmt.Errorf("%w: subscription %s: negative rate limit", ErrInvalid, s.ID)
	}
	known := false
	for _, p := range sink.Protocols() {
		known = known || p == s.Protocol
	}
	if !known {
		return fmt.Errorf("%w: subscription %s: unknown protocol %q", ErrInvalid, s.ID, s.Protocol)
	}
	for i, f := range s.Filters {
		if err := f.Validate(); err != nil {
			return fmt.Errorf("subscription %s: filter %d: %w", s.ID, i, err)
		}
	}
	return nil
}

// Durable is the name of the subscription's consumer on VIGIL_ALERTS.
func (s Subscription) Durable() string { return DurablePrefix + s.ID }

// DurablePrefix starts every subscription's durable (busauth.ConsumerNotifier).
const DurablePrefix = "vigil-notifier-"

// rateLimit is the subscription's deliveries per second, 0 for none.
func (s Subscription) rateLimit() float64 {
	if s.RateLimit > 0 {
		return s.RateLimit
	}
	switch s.Protocol {
	case sink.ProtocolSlack, sink.ProtocolTeams:
		return 1
	}
	return 0
}

// severityRank orders severities; unknown ones rank below info.
func severityRank(s events.Severity) int {
	switch s {
	case events.SeverityInfo:
		return 1
	case events.SeverityWarning:
		return 2
	case events.SeverityHigh:
		return 3
	case events.SeverityCritical:
		return 4
	}
	return 0
}
