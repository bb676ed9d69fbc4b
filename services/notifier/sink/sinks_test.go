package sink_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// request is what a test receiver got.
type request struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// receiver is an httptest server that records every request and answers
// with the statuses given, in turn (the last one repeats).
func receiver(t *testing.T, statuses ...int) (*httptest.Server, <-chan request) {
	t.Helper()
	return receiverGET(t, "[]", statuses...)
}

// receiverGET is receiver answering every GET 200 with getBody (what an
// Alertmanager answers GET /api/v2/alerts with).
func receiverGET(t *testing.T, getBody string, statuses ...int) (*httptest.Server, <-chan request) {
	t.Helper()
	got := make(chan request, 100)
	var n int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- request{Method: r.Method, Path: r.URL.RequestURI(), Header: r.Header.Clone(), Body: b}
		if r.Method == http.MethodGet {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, getBody)
			return
		}
		status := http.StatusOK
		if len(statuses) > 0 {
			status = statuses[min(n, len(statuses)-1)]
		}
		n++ // handlers of one test run one at a time: the sink sends one request at a time
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

// nextPost returns the next POST request, skipping GETs.
func nextPost(t *testing.T, got <-chan request) request {
	t.Helper()
	for {
		if r := next(t, got); r.Method != http.MethodGet {
			return r
		}
	}
}

// next returns the next request, failing the test if none came.
func next(t *testing.T, got <-chan request) request {
	t.Helper()
	select {
	case r := <-got:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no request received")
		return request{}
	}
}

var (
	testAt   = time.Date(2026, 12, 2, 15, 4, 5, 0, time.UTC)
	testVM   = events.VMKey("/subscriptions/0000/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/web-01")
	testInfo = &sink.VMInfo{Name: "web-01", ResourceGroup: "rg-prod", Subscription: "0000-1111", Platform: "azure-sev-snp", Tags: map[string]string{"env": "prod", "cost-center": "42"}}
)

func firing() sink.Notification {
	return sink.Notification{
		ID:    "alert-3f2a9c",
		Key:   events.AlertKey(testVM, "attestation"),
		State: sink.Firing,
		Alert: events.Alert{
			Severity:   events.SeverityCritical,
			Code:       "vm.untrusted",
			VMKey:      testVM,
			ResourceID: "/subscriptions/0000/resourceGroups/rg-prod/providers/Microsoft.Compute/virtualMachines/web-01",
			Message:    "web-01 is untrusted: a measurement does not match the policy",
			Reasons:    []events.Reason{{Code: "measurement.mismatch", Message: "PCR 4 differs"}, {Code: "debug.enabled"}},
			CauseID:    "verdict-81",
			Source:     "attest-worker",
			At:         testAt,
			Key:        events.AlertKey(testVM, "attestation"),
			State:      events.AlertFiring,
		},
		VM:         testInfo,
		Time:       testAt.Add(time.Second),
		Source:     "/vigil/test",
		ConsoleURL: "https://vigil.example.com/alerts/alert-3f2a9c",
	}
}

func resolved() sink.Notification {
	n := firing()
	n.ID = "alert-3f2a9c-resolved"
	n.State = sink.Resolved
	n.Alert.State = events.AlertResolved
	n.Time = testAt.Add(10 * time.Minute)
	return n
}

// recovered is the resolve producers publish: another code and severity
// than the firing, the same key (the attest-worker's vm.recovered).
func recovered() sink.Notification {
	n := resolved()
	n.ID = "alert-recovered"
	n.Alert.Severity, n.Alert.Code = events.SeverityInfo, "vm.recovered"
	n.Alert.Message = "web-01 attests again (trusted after untrusted)"
	n.Alert.Reasons = nil
	n.Alert.At = n.Time
	return n
}

func digest(count int) sink.Notification {
	n := firing()
	n.ID = "digest-1"
	n.Digest = make([]events.Alert, count)
	for i := range n.Digest {
		a := n.Alert
		a.VMKey = events.VMKey(fmt.Sprintf("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm-%03d", i))
		a.Key = events.AlertKey(a.VMKey, "attestation")
		a.Message = fmt.Sprintf("vm-%03d is untrusted: %s", i, strings.Repeat("a measurement does not match ", 4))
		n.Digest[i] = a
	}
	n.Alert = n.Digest[0]
	return n
}

func TestSinkPayloads(t *testing.T) {
	secrets := []string{sink.NewWebhookSecret(), sink.NewWebhookSecret()}
	const bearer, routingKey = "bearer-0123", "R0123456789abcdef0123456789abcdef"
	tests := []struct {
		name   string
		spec   sink.Spec
		path   string // the path the sink posts to (after the server's URL)
		status int    // what the receiver answers
		n      sink.Notification
		get    string // what GET /api/v2/alerts answers
		check  func(t *testing.T, r request, n sink.Notification)
	}{
		{name: "webhook firing", spec: sink.Spec{Protocol: "webhook", Secrets: sink.Secrets{WebhookSecrets: secrets, BearerToken: bearer}}, path: "/hook", status: 200, n: firing(), check: checkWebhook(secrets, bearer)},
		{name: "webhook resolved", spec: sink.Spec{Protocol: "webhook", Secrets: sink.Secrets{WebhookSecrets: secrets[:1]}}, path: "/hook", status: 204, n: resolved(), check: checkWebhook(secrets[:1], "")},
		{name: "webhook digest", spec: sink.Spec{Protocol: "webhook", Secrets: sink.Secrets{WebhookSecrets: secrets[1:]}}, path: "/hook", status: 202, n: digest(37), check: checkWebhook(secrets[1:], "")},
		{name: "slack firing", spec: sink.Spec{Protocol: "slack"}, path: "/services/T0/B0/X", status: 200, n: firing(), check: checkSlack},
		{name: "slack resolved", spec: sink.Spec{Protocol: "slack"}, path: "/services/T0/B0/X", status: 200, n: resolved(), check: checkSlack},
		{name: "slack digest", spec: sink.Spec{Protocol: "slack"}, path: "/services/T0/B0/X", status: 200, n: digest(37), check: checkSlack},
		{name: "slack huge digest", spec: sink.Spec{Protocol: "slack"}, path: "/services/T0/B0/X", status: 200, n: digest(2000), check: checkSlack},
		{name: "teams firing", spec: sink.Spec{Protocol: "teams"}, path: "/workflows/x/triggers/manual/paths/invoke?api-version=1&sig=s", status: 202, n: firing(), check: checkTeams},
		{name: "teams resolved", spec: sink.Spec{Protocol: "teams"}, path: "/workflows/x/triggers/manual/paths/invoke?sig=s", status: 202, n: resolved(), check: checkTeams},
		{name: "teams digest", spec: sink.Spec{Protocol: "teams"}, path: "/workflows/x/triggers/manual/paths/invoke?sig=s", status: 202, n: digest(120), check: checkTeams},
		{name: "pagerduty trigger", spec: sink.Spec{Protocol: "pagerduty", Secrets: sink.Secrets{RoutingKey: routingKey}}, path: "/v2/enqueue", status: 202, n: firing(), check: checkPagerDuty(routingKey)},
		{name: "pagerduty resolve", spec: sink.Spec{Protocol: "pagerduty", Secrets: sink.Secrets{RoutingKey: routingKey}}, path: "/v2/enqueue", status: 202, n: resolved(), check: checkPagerDuty(routingKey)},
		{name: "pagerduty digest", spec: sink.Spec{Protocol: "pagerduty", Secrets: sink.Secrets{RoutingKey: routingKey}}, path: "/v2/enqueue", status: 202, n: digest(37), check: checkPagerDuty(routingKey)},
		{name: "alertmanager firing", spec: sink.Spec{Protocol: "alertmanager", Secrets: sink.Secrets{BearerToken: bearer}, Settings: map[string]string{"tag_labels": "env,cost-center"}}, path: "/api/v2/alerts", status: 200, n: firing(), check: checkAlertmanager(bearer)},
		{name: "alertmanager resolved", spec: sink.Spec{Protocol: "alertmanager"}, path: "/api/v2/alerts", status: 200, n: resolved(), get: firingInAlertmanager(), check: checkAlertmanager("")},
		{name: "alertmanager recovered", spec: sink.Spec{Protocol: "alertmanager"}, path: "/api/v2/alerts", status: 200, n: recovered(), get: firingInAlertmanager(), check: checkAlertmanager("")},
		{name: "alertmanager digest", spec: sink.Spec{Protocol: "alertmanager"}, path: "/api/v2/alerts", status: 200, n: digest(5), check: checkAlertmanager("")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			get := tt.get
			if get == "" {
				get = "[]"
			}
			srv, got := receiverGET(t, get, tt.status)
			spec := tt.spec
			spec.URL = srv.URL + tt.path
			if spec.Protocol == "alertmanager" {
				spec.URL = srv.URL + "/"
			}
			s, err := sink.New(spec, devClient())
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Deliver(t.Context(), tt.n); err != nil {
				t.Fatalf("Deliver: %v", err)
			}
			r := nextPost(t, got)
			if r.Method != http.MethodPost || r.Path != tt.path {
				t.Errorf("%s %s, want POST %s", r.Method, r.Path, tt.path)
			}
			if ua := r.Header.Get("User-Agent"); !strings.HasPrefix(ua, "vigil-notifier") {
				t.Errorf("User-Agent %q", ua)
			}
			tt.check(t, r, tt.n)
		})
	}
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(strings.NewReader(string(b)))
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decoding %s: %v", b, err)
	}
	return v
}

func checkWebhook(secrets []string, bearer string) func(t *testing.T, r request, n sink.Notification) {
	return func(t *testing.T, r request, n sink.Notification) {
		if ct := r.Header.Get("Content-Type"); ct != "application/cloudevents+json" {
			t.Errorf("Content-Type %q", ct)
		}
		if id := r.Header.Get("webhook-id"); id != n.ID {
			t.Errorf("webhook-id %q, want %q", id, n.ID)
		}
		ts, err := strconv.ParseInt(r.Header.Get("webhook-timestamp"), 10, 64)
		if err != nil || time.Since(time.Unix(ts, 0)).Abs() > time.Minute {
			t.Errorf("webhook-timestamp %q", r.Header.Get("webhook-timestamp"))
		}
		sigs := strings.Fields(r.Header.Get("webhook-signature"))
		if len(sigs) != len(secrets) {
			t.Errorf("webhook-signature %q: %d signatures, want %d", sigs, len(sigs), len(secrets))
		}
		for i, s := range secrets {
			if err := sink.Verify([]string{s}, r.Header, r.Body, time.Now(), 5*time.Minute); err != nil {
				t.Errorf("Verify with secret %d: %v", i, err)
			}
		}
		if got, want := r.Header.Get("Authorization"), "Bearer "+bearer; bearer != "" && got != want || bearer == "" && got != "" {
			t.Errorf("Authorization %q", got)
		}
		// The documented shape, field by field, from the raw JSON.
		raw := decode[map[string]any](t, r.Body)
		for _, k := range []string{"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"} {
			if _, ok := raw[k]; !ok {
				t.Errorf("CloudEvent without %q: %s", k, r.Body)
			}
		}
		ev := decode[sink.CloudEvent](t, r.Body)
		wantType := "io.vigil.alert.v1"
		if n.State == sink.Resolved {
			wantType = "io.vigil.alert.resolved.v1"
		}
		if ev.SpecVersion != "1.0" || ev.ID != n.ID || ev.Source != n.Source || ev.Type != wantType ||
			ev.Subject != n.Alert.VMKey || !ev.Time.Equal(n.Time) || ev.DataContentType != "application/json" {
			t.Errorf("CloudEvent attributes %+v", ev)
		}
		d := ev.Data
		if d.State != n.State || d.Key != n.Key || d.Alert.Code != n.Alert.Code || d.Alert.VMKey != n.Alert.VMKey ||
			len(d.Digest) != len(n.Digest) || d.VM == nil || d.VM.Name != n.VM.Name || d.ConsoleURL != n.ConsoleURL {
			t.Errorf("CloudEvent data %+v", d)
		}
	}
}

// slackMessage is a loose decoding of a Block Kit message.
type slackMessage struct {
	Text   string `json:"text"`
	Blocks []struct {
		Type string `json:"type"`
		Text *struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"text"`
		Fields []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"fields"`
		Elements []struct {
			Type string `json:"type"`
			Text string `json:"text"`
		} `json:"elements"`
	} `json:"blocks"`
}

func checkSlack(t *testing.T, r request, n sink.Notification) {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	m := decode[slackMessage](t, r.Body)
	if m.Text == "" || len([]rune(m.Text)) > 3000 {
		t.Errorf("fallback text of %d characters", len([]rune(m.Text)))
	}
	if len(m.Blocks) < 2 || len(m.Blocks) > 50 {
		t.Fatalf("%d blocks, want 2 to 50", len(m.Blocks))
	}
	if b := m.Blocks[0]; b.Type != "header" || b.Text == nil || b.Text.Type != "plain_text" || len([]rune(b.Text.Text)) > 150 {
		t.Errorf("first block %+v, want a header of plain_text within 150 characters", b)
	}
	if b := m.Blocks[len(m.Blocks)-1]; b.Type != "context" || len(b.Elements) == 0 || len(b.Elements) > 10 {
		t.Errorf("last block %+v, want a context", b)
	}
	var all strings.Builder
	all.WriteString(m.Text)
	for _, b := range m.Blocks {
		switch b.Type {
		case "header", "section", "context":
		default:
			t.Errorf("block type %q", b.Type)
		}
		if b.Text != nil {
			if n := len([]rune(b.Text.Text)); n == 0 || n > 3000 {
				t.Errorf("%s block text of %d characters", b.Type, n)
			}
			all.WriteString(b.Text.Text + "\n")
		}
		if len(b.Fields) > 10 {
			t.Errorf("%d fields", len(b.Fields))
		}
		for _, f := range b.Fields {
			if f.Type != "mrkdwn" || len([]rune(f.Text)) > 2000 {
				t.Errorf("field %+v", f)
			}
			all.WriteString(f.Text + "\n")
		}
		for _, e := range b.Elements {
			all.WriteString(e.Text + "\n")
		}
	}
	text := all.String()
	switch {
	case len(n.Digest) > 0:
		if !strings.Contains(m.Blocks[0].Text.Text, strconv.Itoa(len(n.Digest))) {
			t.Errorf("digest header %q does not count the alerts", m.Blocks[0].Text.Text)
		}
		listed := strings.Count(text, "• ")
		more := 0
		if m := regexp.MustCompile(`… and (\d+) more`).FindStringSubmatch(text); m != nil {
			more, _ = strconv.Atoi(m[1])
		}
		if listed+more != len(n.Digest) {
			t.Errorf("digest lists %d alerts and %d more, want %d in all", listed, more, len(n.Digest))
		}
	default:
		for _, want := range []string{"web-01", "rg-prod", "critical", "vm.untrusted", "measurement.mismatch: PCR 4 differs", "<https://vigil.example.com/alerts/alert-3f2a9c|Open in Vigil>"} {
			if !strings.Contains(text, want) {
				t.Errorf("the message does not show %q:\n%s", want, text)
			}
		}
	}
	if n.State == sink.Resolved && (!strings.Contains(m.Text, "Resolved") || !strings.Contains(m.Blocks[0].Text.Text, "Resolved")) {
		t.Errorf("a resolved message does not say so: %q", m.Text)
	}
}

func checkTeams(t *testing.T, r request, n sink.Notification) {
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if len(r.Body) > 28<<10 {
		t.Errorf("message of %d bytes, over Teams' 28 KB", len(r.Body))
	}
	m := decode[map[string]any](t, r.Body)
	if m["type"] != "message" {
		t.Errorf("type %v", m["type"])
	}
	atts, _ := m["attachments"].([]any)
	if len(atts) != 1 {
		t.Fatalf("attachments %v", m["attachments"])
	}
	att := atts[0].(map[string]any)
	if att["contentType"] != "application/vnd.microsoft.card.adaptive" {
		t.Errorf("contentType %v", att["contentType"])
	}
	card, _ := att["content"].(map[string]any)
	if card["type"] != "AdaptiveCard" || card["version"] != "1.4" || card["$schema"] != "http://adaptivecards.io/schemas/adaptive-card.json" {
		t.Errorf("card type %v version %v $schema %v", card["type"], card["version"], card["$schema"])
	}
	body, _ := card["body"].([]any)
	if len(body) < 2 {
		t.Fatalf("card body %v", card["body"])
	}
	first := body[0].(map[string]any)
	if first["type"] != "TextBlock" || first["weight"] != "Bolder" {
		t.Errorf("first element %v", first)
	}
	out, _ := json.Marshal(card)
	text := string(out)
	if n.State == sink.Resolved && !strings.Contains(first["text"].(string), "Resolved") {
		t.Errorf("a resolved card does not say so: %v", first["text"])
	}
	if len(n.Digest) > 0 {
		if !strings.Contains(first["text"].(string), strconv.Itoa(len(n.Digest))) {
			t.Errorf("digest title %v", first["text"])
		}
		return
	}
	for _, want := range []string{"web-01", "rg-prod", "critical", "vm.untrusted", "Action.OpenUrl", "https://vigil.example.com/alerts/alert-3f2a9c"} {
		if !strings.Contains(text, want) {
			t.Errorf("the card does not show %q: %s", want, text)
		}
	}
}

func checkPagerDuty(routingKey string) func(t *testing.T, r request, n sink.Notification) {
	return func(t *testing.T, r request, n sink.Notification) {
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		ev := decode[map[string]any](t, r.Body)
		action := "trigger"
		if n.State == sink.Resolved {
			action = "resolve"
		}
		if ev["routing_key"] != routingKey || ev["event_action"] != action || ev["dedup_key"] != sink.PagerDutyDedupKey(n.Key) {
			t.Errorf("routing_key, event_action, dedup_key: %v %v %v", ev["routing_key"], ev["event_action"], ev["dedup_key"])
		}
		p, _ := ev["payload"].(map[string]any)
		if action == "resolve" {
			return // payload optional
		}
		if p == nil {
			t.Fatalf("trigger without payload: %s", r.Body)
		}
		summary, _ := p["summary"].(string)
		if summary == "" || len([]rune(summary)) > 1024 {
			t.Errorf("summary %q", summary)
		}
		if p["severity"] != "critical" || p["source"] == "" || p["class"] != "vm.untrusted" || p["component"] != n.Alert.VMKey || p["group"] != "rg-prod" {
			t.Errorf("payload %v", p)
		}
		if ts, err := time.Parse(time.RFC3339, p["timestamp"].(string)); err != nil || !ts.Equal(n.Alert.At) {
			t.Errorf("timestamp %v", p["timestamp"])
		}
		if _, ok := p["custom_details"].(map[string]any); !ok {
			t.Errorf("custom_details %v", p["custom_details"])
		}
	}
}

var promLabelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

func checkAlertmanager(bearer string) func(t *testing.T, r request, n sink.Notification) {
	return func(t *testing.T, r request, n sink.Notification) {
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		if got := r.Header.Get("Authorization"); bearer != "" && got != "Bearer "+bearer || bearer == "" && got != "" {
			t.Errorf("Authorization %q", got)
		}
		alerts := decode[[]map[string]any](t, r.Body)
		want := max(1, len(n.Digest))
		if len(alerts) != want {
			t.Fatalf("%d alerts, want %d", len(alerts), want)
		}
		for _, a := range alerts {
			labels, _ := a["labels"].(map[string]any)
			for k, v := range labels {
				if !promLabelName.MatchString(k) || strings.HasPrefix(k, "__") {
					t.Errorf("label name %q", k)
				}
				if s, ok := v.(string); !ok || s == "" {
					t.Errorf("label %s = %v", k, v)
				}
			}
			for _, k := range []string{"alertname", "severity", "vm", "vigil_key"} {
				if labels[k] == nil {
					t.Errorf("no label %s: %v", k, labels)
				}
			}
			ann, _ := a["annotations"].(map[string]any)
			if ann["summary"] == nil || ann["description"] == nil {
				t.Errorf("annotations %v", ann)
			}
			if _, err := time.Parse(time.RFC3339, a["startsAt"].(string)); err != nil {
				t.Errorf("startsAt %v", a["startsAt"])
			}
			endsAt, hasEnd := a["endsAt"].(string)
			if n.State == sink.Firing && hasEnd {
				t.Errorf("a firing alert with endsAt %v", endsAt)
			}
			if n.State == sink.Resolved {
				if e, err := time.Parse(time.RFC3339, endsAt); err != nil || !e.Equal(n.Time) {
					t.Errorf("a resolved alert with endsAt %q, want %v", endsAt, n.Time)
				}
			}
			if a["generatorURL"] != n.ConsoleURL {
				t.Errorf("generatorURL %v", a["generatorURL"])
			}
		}
		if len(n.Digest) == 0 {
			labels := alerts[0]["labels"].(map[string]any)
			if labels["vm_name"] != "web-01" || labels["resource_group"] != "rg-prod" || labels["alertname"] != "vm.untrusted" || labels["severity"] != "critical" || labels["vm"] != n.Alert.VMKey || labels["vigil_key"] != n.Key {
				t.Errorf("labels %v", labels)
			}
		}
	}
}

// jsonMarshal returns v's JSON without HTML escaping, as a receiver reads it.
func jsonMarshal(v any) (string, error) {
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	err := enc.Encode(v)
	return b.String(), err
}

// firingInAlertmanager is GET /api/v2/alerts's answer while firing() fires.
func firingInAlertmanager() string {
	a := sink.AlertmanagerAlertsOf(firing(), nil, time.Now())[0]
	b, _ := json.Marshal([]map[string]any{{
		"labels": a.Labels, "annotations": a.Annotations, "startsAt": a.StartsAt, "endsAt": time.Now().Add(5 * time.Minute),
		"generatorURL": a.GeneratorURL, "fingerprint": "0123456789abcdef", "status": map[string]any{"state": "active"},
	}})
	return string(b)
}
