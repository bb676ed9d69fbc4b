package sink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/vigil-cc/vigil/pkg/events"
)

// PagerDutyEventsURL is PagerDuty's Events API v2 endpoint.
const PagerDutyEventsURL = "https://events.pagerduty.com/v2/enqueue"

// PagerDuty limits.
const (
	pdMaxSummary  = 1024
	pdMaxDedupKey = 255
)

// PagerDutyEvent is an Events API v2 event.
type PagerDutyEvent struct {
	RoutingKey  string            `json:"routing_key"`
	EventAction string            `json:"event_action"` // trigger or resolve
	DedupKey    string            `json:"dedup_key"`
	Payload     *PagerDutyPayload `json:"payload,omitempty"` // trigger only
	Client      string            `json:"client,omitempty"`
	ClientURL   string            `json:"client_url,omitempty"`
	Links       []PagerDutyLink   `json:"links,omitempty"`
}

// PagerDutyPayload is a trigger event's payload.
type PagerDutyPayload struct {
	Summary       string         `json:"summary"`
	Source        string         `json:"source"`
	Severity      string         `json:"severity"` // critical, error, warning or info
	Timestamp     string         `json:"timestamp,omitempty"`
	Component     string         `json:"component,omitempty"`
	Group         string         `json:"group,omitempty"`
	Class         string         `json:"class,omitempty"`
	CustomDetails map[string]any `json:"custom_details,omitempty"`
}

// PagerDutyLink is a link shown with the incident.
type PagerDutyLink struct {
	Href string `json:"href"`
	Text string `json:"text,omitempty"`
}

// PagerDutySeverity maps a Vigil severity to PagerDuty's.
func PagerDutySeverity(s events.Severity) string {
	switch s {
	case events.SeverityCritical:
		return "critical"
	case events.SeverityHigh:
		return "error"
	case events.SeverityWarning:
		return "warning"
	}
	return "info"
}

// PagerDutyDedupKey is the dedup_key of an alert key: "vigil/" + key, or,
// for a key too long for PagerDuty, "vigil/sha256:" + its hex digest. Every
// notification of one VM and condition has the same one, so a resolve
// resolves what the trigger opened.
func PagerDutyDedupKey(key string) string {
	k := "vigil/" + key
	if len(k) <= pdMaxDedupKey && utf8.ValidString(k) {
		return k
	}
	sum := sha256.Sum256([]byte(key))
	return "vigil/sha256:" + hex.EncodeToString(sum[:])
}

type pagerDuty struct {
	c          *Client
	url        string
	routingKey string
}

func newPagerDuty(spec Spec, c *Client) (*pagerDuty, error) {
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, false, true); err != nil {
		return nil, err
	}
	if spec.Secrets.RoutingKey == "" {
		return nil, fmt.Errorf("%w: pagerduty needs a routing key (the integration key of an Events API v2 integration)", ErrInvalidSpec)
	}
	return &pagerDuty{c: c, url: spec.URL, routingKey: spec.Secrets.RoutingKey}, nil
}

func (p *pagerDuty) Protocol() string { return ProtocolPagerDuty }

// PagerDutyEventOf returns the event a PagerDuty sink sends for n (with an
// empty routing key).
func PagerDutyEventOf(n Notification) PagerDutyEvent {
	ev := PagerDutyEvent{
		EventAction: "trigger",
		DedupKey:    PagerDutyDedupKey(n.Key),
		Client:      "Vigil",
		ClientURL:   n.ConsoleURL,
	}
	if n.ConsoleURL != "" {
		ev.Links = []PagerDutyLink{{Href: n.ConsoleURL, Text: "Open in Vigil"}}
	}
	if n.State == Resolved {
		ev.EventAction = "resolve"
		return ev
	}
	a := n.Alert
	source := a.VMKey
	if n.VM != nil && n.VM.Name != "" {
		source = n.VM.Name
	}
	if source == "" {
		source = "fleet"
	}
	details := map[string]any{
		"vm_key":  a.VMKey,
		"code":    a.Code,
		"message": a.Message,
		"key":     n.Key,
	}
	if a.ResourceID != "" {
		details["resource_id"] = a.ResourceID
	}
	if len(a.Reasons) > 0 {
		details["reasons"] = a.Reasons
	}
	if a.CauseID != "" {
		details["cause_id"] = a.CauseID
	}
	if a.Source != "" {
		details["raised_by"] = a.Source
	}
	var group string
	if n.VM != nil {
		group = n.VM.ResourceGroup
		if n.VM.Subscription != "" {
			details["subscription"] = n.VM.Subscription
		}
		if n.VM.Platform != "" {
			details["platform"] = n.VM.Platform
		}
		if len(n.VM.Tags) > 0 {
			details["tags"] = n.VM.Tags
		}
	}
	summary := fmt.Sprintf("[%s] %s: %s", a.Severity, source, a.Message)
	if len(n.Digest) > 0 {
		summary = digestTitle(n)
		vms := make([]string, 0, len(n.Digest))
		for _, d := range n.Digest {
			vms = append(vms, d.VMKey)
		}
		details["digest_vms"] = vms
		details["digest_count"] = len(n.Digest)
	}
	ts := a.At
	if ts.IsZero() {
		ts = n.Time
	}
	ev.Payload = &PagerDutyPayload{
		Summary:       truncate(summary, pdMaxSummary),
		Source:        source,
		Severity:      PagerDutySeverity(a.Severity),
		Component:     a.VMKey,
		Group:         group,
		Class:         a.Code,
		CustomDetails: details,
	}
	if !ts.IsZero() {
		ev.Payload.Timestamp = ts.UTC().Format(time.RFC3339Nano)
	}
	return ev
}

func (p *pagerDuty) Deliver(ctx context.Context, n Notification) error {
	if err := checkNotification(n); err != nil {
		return err
	}
	ev := PagerDutyEventOf(n)
	ev.RoutingKey = p.routingKey
	body, err := json.Marshal(ev)
	if err != nil {
		return &Error{Kind: Reject, Err: fmt.Errorf("pagerduty: encoding: %w", err)}
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	_, err = p.c.Do(ctx, http.MethodPost, p.url, h, body)
	return scrub(err, p.routingKey)
}

// truncate cuts s to at most max bytes on a rune boundary, ending in "…"
// when cut.
func truncate(s string, max int) string {
	if len(s) <= max {
		return s
	}
	const ell = "…"
	cut := max - len(ell)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strings.ToValidUTF8(s[:cut], "") + ell
}

// digestTitle is a digest's one-line summary, e.g. "37 VMs: vm.untrusted
// (critical)".
func digestTitle(n Notification) string {
	verb := "firing"
	if n.State == Resolved {
		verb = "resolved"
	}
	return fmt.Sprintf("%d alerts %s: %s (%s) and others", len(n.Digest), verb, n.Alert.Code, n.Alert.Severity)
}
