package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// CloudEvents types of webhook deliveries.
const (
	// TypeFiring is a firing alert (or digest): Vigil's alert type.
	TypeFiring = events.TypeAlert
	// TypeResolved is a resolved alert.
	TypeResolved = "io.vigil.alert.resolved.v1"
	// ContentTypeCloudEvents is the structured-mode content type.
	ContentTypeCloudEvents = "application/cloudevents+json"
)

// CloudEvent is the structured CloudEvents 1.0 JSON a webhook receives.
type CloudEvent struct {
	SpecVersion     string    `json:"specversion"`
	ID              string    `json:"id"`
	Source          string    `json:"source"`
	Type            string    `json:"type"`
	Subject         string    `json:"subject,omitempty"`
	Time            time.Time `json:"time,omitzero"`
	DataContentType string    `json:"datacontenttype"`
	Data            EventData `json:"data"`
}

// EventData is a webhook CloudEvent's data.
type EventData struct {
	State      State          `json:"state"`
	Key        string         `json:"key"`
	Alert      events.Alert   `json:"alert"`
	Digest     []events.Alert `json:"digest,omitempty"`
	VM         *VMInfo        `json:"vm,omitempty"`
	ConsoleURL string         `json:"console_url,omitempty"`
}

// CloudEventOf returns the CloudEvent a webhook sink sends for n.
func CloudEventOf(n Notification) CloudEvent {
	typ := TypeFiring
	if n.State == Resolved {
		typ = TypeResolved
	}
	src := n.Source
	if src == "" {
		src = "/vigil"
	}
	return CloudEvent{
		SpecVersion:     "1.0",
		ID:              n.ID,
		Source:          src,
		Type:            typ,
		Subject:         n.Alert.VMKey,
		Time:            n.Time.UTC(),
		DataContentType: "application/json",
		Data: EventData{
			State:      n.State,
			Key:        n.Key,
			Alert:      n.Alert,
			Digest:     n.Digest,
			VM:         n.VM,
			ConsoleURL: n.ConsoleURL,
		},
	}
}

// webhook is the generic CloudEvents webhook sink.
type webhook struct {
	c      *Client
	url    string
	signer signer
	bearer string
	now    func() time.Time
}

func newWebhook(spec Spec, c *Client) (*webhook, error) {
	s, err := newSigner(spec.Secrets.WebhookSecrets)
	if err != nil {
		return nil, err
	}
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, true, true, false); err != nil {
		return nil, err
	}
	return &webhook{c: c, url: spec.URL, signer: s, bearer: spec.Secrets.BearerToken, now: time.Now}, nil
}

func (w *webhook) Protocol() string { return ProtocolWebhook }

func (w *webhook) Deliver(ctx context.Context, n Notification) error {
	if err := checkNotification(n); err != nil {
		return err
	}
	body, err := json.Marshal(CloudEventOf(n))
	if err != nil {
		return &Error{Kind: Reject, Err: fmt.Errorf("webhook: encoding: %w", err)}
	}
	h := http.Header{}
	h.Set("Content-Type", ContentTypeCloudEvents)
	ts := w.now().Unix()
	h.Set(HeaderWebhookID, n.ID)
	h.Set(HeaderWebhookTimestamp, strconv.FormatInt(ts, 10))
	if len(w.signer.keys) > 0 {
		h.Set(HeaderWebhookSignature, w.signer.sign(n.ID, ts, body))
	}
	if w.bearer != "" {
		h.Set("Authorization", "Bearer "+w.bearer)
	}
	_, err = w.c.Do(ctx, http.MethodPost, w.url, h, body)
	return scrub(err, w.bearer)
}
