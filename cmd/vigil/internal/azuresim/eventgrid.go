package azuresim

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// Op is a VM operation that Azure reports through Event Grid.
type Op string

// Operations on a VM.
const (
	OpCreate     Op = "create"
	OpStart      Op = "start"
	OpDeallocate Op = "deallocate"
	OpPowerOff   Op = "powerOff"
	OpRestart    Op = "restart"
	OpDelete     Op = "delete"
)

// Event is one Event Grid schema event.
type Event struct {
	ID              string          `json:"id"`
	Topic           string          `json:"topic"`
	Subject         string          `json:"subject"`
	EventType       string          `json:"eventType"`
	EventTime       string          `json:"eventTime"`
	Data            json.RawMessage `json:"data"`
	DataVersion     string          `json:"dataVersion"`
	MetadataVersion string          `json:"metadataVersion"`
}

// LifecycleEvent builds the Azure Resource Manager event that Event Grid
// delivers for op on the VM: the event type, operation name, subject with
// "resourcegroups" in lower case, and the authorization, claims and
// httpRequest blocks as ARM fills them (system-initiated operations carry an
// empty "evidence" array; numeric claims are not strings).
func LifecycleEvent(spec VMSpec, op Op, at time.Time) Event {
	eventType, operation, method := "Microsoft.Resources.ResourceActionSuccess", "", http.MethodPost
	switch op {
	case OpCreate:
		eventType, operation, method = "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Compute/virtualMachines/write", http.MethodPut
	case OpDelete:
		eventType, operation, method = "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.Compute/virtualMachines/delete", http.MethodDelete
	default:
		operation = "Microsoft.Compute/virtualMachines/" + string(op) + "/action"
	}
	subject := fmt.Sprintf("/subscriptions/%s/resourcegroups/%s/providers/Microsoft.Compute/virtualMachines/%s", spec.Subscription, spec.ResourceGroup, spec.Name)
	var evidence any = []any{}
	if op == OpCreate || op == OpDelete {
		evidence = map[string]any{
			"role":                "Contributor",
			"roleAssignmentScope": "/subscriptions/" + spec.Subscription,
			"roleAssignmentId":    newGUID(),
			"roleDefinitionId":    "b24988ac618042a0ab8820f7382dd24c",
			"principalId":         newGUID(),
			"principalType":       "User",
		}
	}
	tenant := "72f988bf-86f1-41af-91ab-2d7cd011db47"
	correlation := newGUID()
	data := map[string]any{
		"authorization": map[string]any{
			"scope":    subject,
			"action":   operation,
			"evidence": evidence,
		},
		"claims": map[string]any{
			"aud":   "https://management.core.windows.net/",
			"iss":   "https://sts.windows.net/" + tenant + "/",
			"iat":   at.Add(-5 * time.Minute).Unix(),
			"nbf":   at.Add(-5 * time.Minute).Unix(),
			"exp":   at.Add(55 * time.Minute).Unix(),
			"appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
			"http://schemas.microsoft.com/identity/claims/tenantid": tenant,
			"http://schemas.microsoft.com/identity/claims/scope":    "user_impersonation",
			"name":     "Vigil Simulator",
			"ver":      "1.0",
			"wids":     []string{"b79fbf4d-3ef9-4689-8143-76b194e85509"},
			"xms_tcdt": 1289241547,
		},
		"correlationId": correlation,
		"httpRequest": map[string]any{
			"clientRequestId": newGUID(),
			"clientIpAddress": "203.0.113.7",
			"method":          method,
			"url":             "https://management.azure.com" + subject + "?api-version=2025-04-01",
		},
		"resourceProvider": "Microsoft.Compute",
		"resourceUri":      subject,
		"operationName":    operation,
		"status":           "Succeeded",
		"subscriptionId":   spec.Subscription,
		"tenantId":         tenant,
	}
	raw, _ := json.Marshal(data) // plain maps and strings always encode
	return Event{
		ID:              newGUID(),
		Topic:           "/subscriptions/" + spec.Subscription,
		Subject:         subject,
		EventType:       eventType,
		EventTime:       at.UTC().Format("2006-01-02T15:04:05.0000000Z"),
		Data:            raw,
		DataVersion:     "2",
		MetadataVersion: "1",
	}
}

// Sender delivers events to a webhook the way Event Grid does: a JSON array
// per batch, the aeg-* headers, retries with backoff on 408, 429, 5xx and
// connection errors, and no retry on 400, 401, 403 and 413 (Event Grid
// dead-letters those).
type Sender struct {
	URL         string        // webhook URL, with ?code=<secret> when the webhook requires it
	Client      *http.Client  // defaults to a client with a 30 s timeout
	MaxAttempts int           // defaults to 10
	Backoff     time.Duration // first retry delay, doubling; defaults to 200 ms
}

// ErrRejected is returned when the webhook refused a batch for good.
var ErrRejected = errors.New("azuresim: webhook rejected the events")

// Send posts events as one batch and retries until the webhook stores them.
func (s *Sender) Send(ctx context.Context, events ...Event) error {
	body, err := json.Marshal(events)
	if err != nil {
		return fmt.Errorf("azuresim: encode events: %w", err)
	}
	attempts := s.MaxAttempts
	if attempts <= 0 {
		attempts = 10
	}
	delay := s.Backoff
	if delay <= 0 {
		delay = 200 * time.Millisecond
	}
	var last error
	for i := 0; i < attempts; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return fmt.Errorf("azuresim: send: %w (last error: %w)", ctx.Err(), last)
			case <-time.After(delay):
			}
			delay = min(delay*2, 30*time.Second)
		}
		status, err := s.post(ctx, body, "Notification", i+1)
		switch {
		case err != nil:
			last = err
		case status >= 200 && status < 300:
			return nil
		case status == http.StatusBadRequest || status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusRequestEntityTooLarge:
			return fmt.Errorf("%w: HTTP %d", ErrRejected, status)
		default:
			last = fmt.Errorf("HTTP %d", status)
		}
	}
	return fmt.Errorf("azuresim: events not delivered after %d attempts: %w", attempts, last)
}

// Validate performs the subscription validation handshake, as Event Grid
// does when a subscription is created: it sends a
// Microsoft.EventGrid.SubscriptionValidationEvent and checks that the webhook
// echoes the validation code.
func (s *Sender) Validate(ctx context.Context) error {
	code := newGUID()
	data, _ := json.Marshal(map[string]string{"validationCode": code, "validationUrl": ""})
	ev := Event{
		ID: newGUID(), Topic: "/subscriptions/00000000-0000-0000-0000-000000000000", Subject: "",
		EventType: "Microsoft.EventGrid.SubscriptionValidationEvent", EventTime: time.Now().UTC().Format(time.RFC3339Nano),
		Data: data, DataVersion: "2", MetadataVersion: "1",
	}
	body, _ := json.Marshal([]Event{ev})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("aeg-event-type", "SubscriptionValidation")
	resp, err := s.client().Do(req)
	if err != nil {
		return fmt.Errorf("azuresim: validation handshake: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		ValidationResponse string `json:"validationResponse"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return fmt.Errorf("azuresim: validation handshake: HTTP %d: %v", resp.StatusCode, err)
	}
	if out.ValidationResponse != code {
		return fmt.Errorf("azuresim: validation handshake answered %q, want %q", out.ValidationResponse, code)
	}
	return nil
}

func (s *Sender) client() *http.Client {
	if s.Client != nil {
		return s.Client
	}
	return &http.Client{Timeout: 30 * time.Second}
}

func (s *Sender) post(ctx context.Context, body []byte, kind string, attempt int) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.URL, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("aeg-event-type", kind)
	req.Header.Set("aeg-delivery-count", fmt.Sprint(attempt-1))
	req.Header.Set("aeg-subscription-name", "VIGIL-SIM")
	req.Header.Set("aeg-data-version", "2")
	req.Header.Set("aeg-metadata-version", "1")
	resp, err := s.client().Do(req)
	if err != nil {
		return 0, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
	return resp.StatusCode, nil
}

func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// NewVMID returns a random vmId GUID in the upper case in which the HCL
// runtime data reports vmUniqueId.
func NewVMID() string { return strings.ToUpper(newGUID()) }
