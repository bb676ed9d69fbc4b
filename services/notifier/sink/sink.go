// Package sink delivers one notification to one receiver: a generic
// CloudEvents webhook signed per the Standard Webhooks spec, a Slack
// incoming webhook, a Microsoft Teams Workflows webhook, PagerDuty's Events
// API v2 or a Prometheus Alertmanager (API v2). Every sink sends through the
// one safe HTTP client of this package (NewClient) and reports failures as
// *Error, classified for the caller's retry logic (Classify).
//
// The package formats and sends; retries, rate limits, digests and the
// firing/resolved bookkeeping belong to the notifier core.
package sink

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// State is a notification's state: firing or resolved.
type State string

// States.
const (
	Firing   State = "firing"
	Resolved State = "resolved"
)

// Notification is one delivery: an alert (or a digest of several) in a state.
type Notification struct {
	// ID is stable: the CloudEvent id and webhook-id, the same on every retry.
	ID string
	// Key is the alert's stable key (VM + condition), e.g.
	// "vm-key/vm.untrusted"; PagerDuty's dedup_key derives from it.
	Key string
	// State is Firing or Resolved.
	State State
	// Alert is the alert (for a digest: the first one).
	Alert events.Alert
	// Digest is non-empty for a burst digest ("37 VMs became untrusted in
	// the last minute"), with the list.
	Digest []events.Alert
	// VM is optional inventory context.
	VM *VMInfo
	// Time is when the notification was made (for Resolved: the resolve time).
	Time time.Time
	// Source is the CloudEvents source, e.g. "/vigil/<installation>".
	Source string
	// ConsoleURL is an optional link to the alert in a console.
	ConsoleURL string
}

// VMInfo is inventory context of the alert's VM.
type VMInfo struct {
	Name          string            `json:"name,omitempty"`
	ResourceGroup string            `json:"resource_group,omitempty"`
	Subscription  string            `json:"subscription,omitempty"`
	Platform      string            `json:"platform,omitempty"`
	Tags          map[string]string `json:"tags,omitempty"`
}

// Sink delivers notifications to one receiver. Deliver returns nil when the
// receiver answered 2xx, otherwise an error that Classify classifies
// (normally an *Error). Implementations are safe for concurrent use.
type Sink interface {
	Deliver(ctx context.Context, n Notification) error
	// Protocol is the Spec.Protocol the sink was made for.
	Protocol() string
}

// Protocols.
const (
	ProtocolWebhook      = "webhook"
	ProtocolSlack        = "slack"
	ProtocolTeams        = "teams"
	ProtocolPagerDuty    = "pagerduty"
	ProtocolAlertmanager = "alertmanager"
)

// Protocols lists the protocols New accepts.
func Protocols() []string {
	return []string{ProtocolWebhook, ProtocolSlack, ProtocolTeams, ProtocolPagerDuty, ProtocolAlertmanager}
}

// Spec says where and how to deliver. URL and Secrets are confidential (a
// Slack or Teams webhook URL is itself a credential): Spec's String,
// GoString and LogValue show neither.
type Spec struct {
	// Protocol is "webhook", "slack", "teams", "pagerduty" or "alertmanager".
	Protocol string `json:"protocol"`
	// URL is the receiver's URL. For PagerDuty it may be empty (the Events
	// API v2 endpoint); for Alertmanager it is the base URL
	// (/api/v2/alerts is appended).
	URL string `json:"url,omitempty"`
	// Settings are protocol settings; see docs/alerts.md.
	Settings map[string]string `json:"settings,omitempty"`
	// Secrets are write-only credentials.
	Secrets Secrets `json:"secrets,omitzero"`
}

// String shows the protocol and the URL's scheme and host only.
func (s Spec) String() string {
	return fmt.Sprintf("sink.Spec{Protocol:%q URL:%q Settings:%v Secrets:%v}", s.Protocol, RedactURL(s.URL), s.Settings, s.Secrets)
}

// GoString is String: a %#v never shows the URL or the secrets.
func (s Spec) GoString() string { return s.String() }

// LogValue shows the protocol and the URL's scheme and host only.
func (s Spec) LogValue() slog.Value {
	return slog.GroupValue(slog.String("protocol", s.Protocol), slog.String("url", RedactURL(s.URL)))
}

// Secrets are a sink's credentials. They are never shown: String, GoString
// and LogValue redact them (JSON encoding does not, for the store that keeps
// them encrypted).
type Secrets struct {
	// WebhookSecrets are Standard Webhooks secrets ("whsec_" + base64), up
	// to two during a rotation: each signs.
	WebhookSecrets []string `json:"webhook_secrets,omitempty"`
	// BearerToken, when set, is sent as "Authorization: Bearer ..."
	// (webhook, alertmanager).
	BearerToken string `json:"bearer_token,omitempty"`
	// RoutingKey is PagerDuty's integration (routing) key.
	RoutingKey string `json:"routing_key,omitempty"`
}

// String tells which secrets are set, never their values.
func (s Secrets) String() string {
	return fmt.Sprintf("sink.Secrets{WebhookSecrets:%d BearerToken:%s RoutingKey:%s}", len(s.WebhookSecrets), setOrNot(s.BearerToken), setOrNot(s.RoutingKey))
}

// GoString is String.
func (s Secrets) GoString() string { return s.String() }

// LogValue tells which secrets are set, never their values.
func (s Secrets) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int("webhook_secrets", len(s.WebhookSecrets)),
		slog.String("bearer_token", setOrNot(s.BearerToken)),
		slog.String("routing_key", setOrNot(s.RoutingKey)),
	)
}

// IsZero reports whether no secret is set.
func (s Secrets) IsZero() bool {
	return len(s.WebhookSecrets) == 0 && s.BearerToken == "" && s.RoutingKey == ""
}

func setOrNot(s string) string {
	if s == "" {
		return "unset"
	}
	return "REDACTED"
}
