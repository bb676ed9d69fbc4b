package sink_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// TestWebhookRetryKeepsID: a retry after a 500 carries the same webhook-id
// (n.ID) and a valid signature for its own timestamp.
func TestWebhookRetryKeepsID(t *testing.T) {
	secret := sink.NewWebhookSecret()
	srv, got := receiver(t, 500, 200)
	s, err := sink.New(sink.Spec{Protocol: "webhook", URL: srv.URL, Secrets: sink.Secrets{WebhookSecrets: []string{secret}}}, devClient())
	if err != nil {
		t.Fatal(err)
	}
	n := firing()
	err = s.Deliver(t.Context(), n)
	if sink.Classify(err) != sink.Retry {
		t.Fatalf("first delivery: %v, want a Retry error", err)
	}
	if err := s.Deliver(t.Context(), n); err != nil {
		t.Fatalf("retry: %v", err)
	}
	for i := range 2 {
		r := next(t, got)
		if id := r.Header.Get("webhook-id"); id != n.ID {
			t.Errorf("delivery %d: webhook-id %q, want %q", i, id, n.ID)
		}
		if ev := decode[sink.CloudEvent](t, r.Body); ev.ID != n.ID {
			t.Errorf("delivery %d: CloudEvent id %q", i, ev.ID)
		}
		if err := sink.Verify([]string{secret}, r.Header, r.Body, time.Now(), time.Minute); err != nil {
			t.Errorf("delivery %d: %v", i, err)
		}
	}
}

// TestSinkErrors: every sink reports the receiver's refusals classified.
func TestSinkErrors(t *testing.T) {
	specs := map[string]sink.Spec{
		"webhook":      {Protocol: "webhook"},
		"slack":        {Protocol: "slack"},
		"teams":        {Protocol: "teams"},
		"pagerduty":    {Protocol: "pagerduty", Secrets: sink.Secrets{RoutingKey: "R0123456789abcdef0123456789abcdef"}},
		"alertmanager": {Protocol: "alertmanager"},
	}
	tests := []struct {
		status     int
		retryAfter string
		kind       sink.Kind
		after      time.Duration
	}{
		{status: 400, kind: sink.Reject}, // PagerDuty: invalid event
		{status: 404, kind: sink.Reject}, // Slack: no_service
		{status: 410, kind: sink.Gone},   // Slack: channel_is_archived
		{status: 429, retryAfter: "3", kind: sink.Retry, after: 3 * time.Second},
		{status: 500, kind: sink.Retry},
		{status: 503, retryAfter: "120", kind: sink.Retry, after: 2 * time.Minute},
	}
	for proto, spec := range specs {
		for _, tt := range tests {
			t.Run(proto+"/"+http.StatusText(tt.status), func(t *testing.T) {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if tt.retryAfter != "" {
						w.Header().Set("Retry-After", tt.retryAfter)
					}
					http.Error(w, `{"status":"invalid event","message":"Event object is invalid"}`, tt.status)
				}))
				defer srv.Close()
				spec.URL = srv.URL + "/v2/enqueue"
				if proto == "alertmanager" {
					spec.URL = srv.URL
				}
				s, err := sink.New(spec, devClient())
				if err != nil {
					t.Fatal(err)
				}
				err = s.Deliver(t.Context(), firing())
				var e *sink.Error
				if !errors.As(err, &e) || e.Status != tt.status || e.Kind != tt.kind || e.RetryAfter != tt.after {
					t.Fatalf("Deliver: %#v, want Status %d Kind %v RetryAfter %v", err, tt.status, tt.kind, tt.after)
				}
				if !strings.Contains(err.Error(), "invalid event") {
					t.Errorf("the error does not quote the receiver: %v", err)
				}
			})
		}
	}
}

func TestDeliverRefusesBadNotifications(t *testing.T) {
	srv, got := receiver(t)
	s, err := sink.New(sink.Spec{Protocol: "webhook", URL: srv.URL}, devClient())
	if err != nil {
		t.Fatal(err)
	}
	noID := firing()
	noID.ID = ""
	badState := firing()
	badState.State = "pending"
	for _, n := range []sink.Notification{noID, badState} {
		if err := s.Deliver(t.Context(), n); sink.Classify(err) != sink.Reject {
			t.Errorf("Deliver(%q, %q): %v, want Reject", n.ID, n.State, err)
		}
	}
	select {
	case r := <-got:
		t.Fatalf("a bad notification was sent: %s", r.Body)
	default:
	}
}

func TestPagerDutyDedupKey(t *testing.T) {
	key := firing().Key
	if got := sink.PagerDutyDedupKey(key); got != "vigil/"+key {
		t.Errorf("PagerDutyDedupKey(%q) = %q", key, got)
	}
	long := strings.Repeat("k", 300)
	got := sink.PagerDutyDedupKey(long)
	if len(got) > 255 || got != sink.PagerDutyDedupKey(long) || got == sink.PagerDutyDedupKey(long+"x") {
		t.Errorf("PagerDutyDedupKey(300 characters) = %q: want at most 255, stable, distinct", got)
	}
	// Trigger and resolve of one VM and condition share the key.
	if a, b := sink.PagerDutyEventOf(firing()), sink.PagerDutyEventOf(resolved()); a.DedupKey != b.DedupKey || a.EventAction != "trigger" || b.EventAction != "resolve" {
		t.Errorf("trigger %q %q, resolve %q %q", a.EventAction, a.DedupKey, b.EventAction, b.DedupKey)
	}
	if s := sink.PagerDutyEventOf(func() sink.Notification { n := firing(); n.Alert.Message = strings.Repeat("é", 2000); return n }()).Payload.Summary; len([]rune(s)) > 1024 || len(s) > 1024 {
		t.Errorf("summary of %d bytes", len(s))
	}
}

func TestPagerDutySeverity(t *testing.T) {
	for in, want := range map[string]string{"critical": "critical", "high": "error", "warning": "warning", "info": "info", "": "info"} {
		n := firing()
		n.Alert.Severity = events.Severity(in)
		if got := sink.PagerDutyEventOf(n).Payload.Severity; got != want {
			t.Errorf("severity %q: %q, want %q", in, got, want)
		}
	}
}

// TestChatEscapes: text from alerts (messages, VM names, tags come from
// outside Vigil) cannot make Slack mentions or links, nor Teams links.
func TestChatEscapes(t *testing.T) {
	n := firing()
	n.Alert.Message = "<!channel> <https://evil.example|click> [phish](https://evil.example) & more"
	n.VM = &sink.VMInfo{Name: "<@U123>", ResourceGroup: "rg"}
	n.ConsoleURL = "https://evil.example/x|<!here>"
	// Slack parses mrkdwn in the fallback text and in every mrkdwn object;
	// the header is plain_text, shown as is.
	m := sink.SlackMessageOf(n)
	parsed := []string{m.Text}
	for _, b := range m.Blocks {
		if b.Text != nil && b.Text.Type == "mrkdwn" {
			parsed = append(parsed, b.Text.Text)
		}
		for _, f := range append(b.Fields, b.Elements...) {
			parsed = append(parsed, f.Text)
		}
	}
	for _, text := range parsed {
		for _, bad := range []string{"<!channel>", "<https://evil", "<@U123>", "<!here>"} {
			if strings.Contains(text, bad) {
				t.Errorf("Slack mrkdwn contains %q: %s", bad, text)
			}
		}
	}
	if m.Blocks[0].Type != "header" || m.Blocks[0].Text.Type != "plain_text" {
		t.Errorf("first block %+v", m.Blocks[0])
	}
	tb, _ := jsonMarshal(sink.TeamsMessageOf(n))
	if strings.Contains(tb, "[phish](https") || strings.Contains(tb, "evil.example/x") {
		t.Errorf("Teams card links: %s", tb)
	}
}

// TestErrorsNeverEchoSecrets: a receiver that echoes the request (headers,
// URL and body) in its error answer does not get a secret into the error.
func TestErrorsNeverEchoSecrets(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, "%s %s %.60s", r.URL, r.Header.Get("Authorization"), b)
	}))
	defer srv.Close()
	const routingKey, bearer = "ROUTINGKEY0123456789abcdef012345", "BEARERTOKEN0123"
	specs := []sink.Spec{
		{Protocol: "pagerduty", URL: srv.URL + "/v2/enqueue", Secrets: sink.Secrets{RoutingKey: routingKey}},
		{Protocol: "webhook", URL: srv.URL + "/hook", Secrets: sink.Secrets{BearerToken: bearer}},
		{Protocol: "alertmanager", URL: srv.URL, Secrets: sink.Secrets{BearerToken: bearer}},
		{Protocol: "slack", URL: srv.URL + "/services/T0/B0/SLACKPATHSECRET"},
		{Protocol: "teams", URL: srv.URL + "/workflows/x/invoke?api-version=1&sig=TEAMSSIGSECRET"},
	}
	for _, spec := range specs {
		s, err := sink.New(spec, devClient())
		if err != nil {
			t.Fatal(err)
		}
		err = s.Deliver(t.Context(), firing())
		if sink.Classify(err) != sink.Reject {
			t.Errorf("%s: %v, want Reject", spec.Protocol, err)
		}
		if err == nil || !strings.Contains(err.Error(), "REDACTED") {
			t.Errorf("%s: %v: want the echoed secret REDACTED", spec.Protocol, err)
		}
		for _, secret := range []string{routingKey, bearer, "SLACKPATHSECRET", "TEAMSSIGSECRET"} {
			if err != nil && strings.Contains(err.Error(), secret) {
				t.Errorf("%s: the error shows a secret: %v", spec.Protocol, err)
			}
		}
	}
}
