package sink_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func TestNewValidates(t *testing.T) {
	secret := sink.NewWebhookSecret()
	tests := []struct {
		name string
		spec sink.Spec
		ok   bool
		priv bool // AllowPrivate
		want error
	}{
		{name: "webhook", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/vigil", Secrets: sink.Secrets{WebhookSecrets: []string{secret}}}, ok: true},
		{name: "webhook unsigned", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/vigil"}, ok: true},
		{name: "webhook two secrets", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/", Secrets: sink.Secrets{WebhookSecrets: []string{secret, sink.NewWebhookSecret()}, BearerToken: "t"}}, ok: true},
		{name: "webhook three secrets", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/", Secrets: sink.Secrets{WebhookSecrets: []string{secret, secret, secret}}}, want: sink.ErrInvalidSpec},
		{name: "webhook bad secret", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/", Secrets: sink.Secrets{WebhookSecrets: []string{"hunter2"}}}, want: sink.ErrInvalidSpec},
		{name: "webhook routing key", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/", Secrets: sink.Secrets{RoutingKey: "R"}}, want: sink.ErrInvalidSpec},
		{name: "webhook setting", spec: sink.Spec{Protocol: "webhook", URL: "https://hooks.example.com/", Settings: map[string]string{"x": "y"}}, want: sink.ErrInvalidSpec},
		{name: "plain http", spec: sink.Spec{Protocol: "webhook", URL: "http://hooks.example.com/"}, want: sink.ErrRefused},
		{name: "plain http allowed", spec: sink.Spec{Protocol: "webhook", URL: "http://127.0.0.1:9/"}, priv: true, ok: true},
		{name: "loopback literal", spec: sink.Spec{Protocol: "webhook", URL: "https://127.0.0.1/"}, want: sink.ErrRefused},
		{name: "IMDS literal", spec: sink.Spec{Protocol: "webhook", URL: "https://169.254.169.254/"}, want: sink.ErrRefused},
		{name: "ftp", spec: sink.Spec{Protocol: "webhook", URL: "ftp://hooks.example.com/"}, want: sink.ErrInvalidSpec},
		{name: "no host", spec: sink.Spec{Protocol: "webhook", URL: "https:///x"}, want: sink.ErrInvalidSpec},
		{name: "user info", spec: sink.Spec{Protocol: "webhook", URL: "https://u:p@hooks.example.com/"}, want: sink.ErrInvalidSpec},
		{name: "no URL", spec: sink.Spec{Protocol: "slack"}, want: sink.ErrInvalidSpec},
		{name: "unknown protocol", spec: sink.Spec{Protocol: "smtp", URL: "https://x.example.com/"}, want: sink.ErrInvalidSpec},
		{name: "slack", spec: sink.Spec{Protocol: "slack", URL: "https://hooks.slack.com/services/T0/B0/X"}, ok: true},
		{name: "slack bearer", spec: sink.Spec{Protocol: "slack", URL: "https://hooks.slack.com/services/T0/B0/X", Secrets: sink.Secrets{BearerToken: "t"}}, want: sink.ErrInvalidSpec},
		{name: "teams", spec: sink.Spec{Protocol: "teams", URL: "https://prod-00.westeurope.logic.azure.com/workflows/x/triggers/manual/paths/invoke?sig=y"}, ok: true},
		{name: "pagerduty", spec: sink.Spec{Protocol: "pagerduty", Secrets: sink.Secrets{RoutingKey: "R0123456789abcdef0123456789abcdef"}}, ok: true},
		{name: "pagerduty no key", spec: sink.Spec{Protocol: "pagerduty"}, want: sink.ErrInvalidSpec},
		{name: "alertmanager", spec: sink.Spec{Protocol: "alertmanager", URL: "https://am.example.com/", Settings: map[string]string{"tag_labels": "env, team"}}, ok: true},
		{name: "alertmanager empty tag_labels", spec: sink.Spec{Protocol: "alertmanager", URL: "https://am.example.com/", Settings: map[string]string{"tag_labels": ""}}, ok: true},
		{name: "alertmanager unknown setting", spec: sink.Spec{Protocol: "alertmanager", URL: "https://am.example.com/", Settings: map[string]string{"receiver": "x"}}, want: sink.ErrInvalidSpec},
		{name: "alertmanager query", spec: sink.Spec{Protocol: "alertmanager", URL: "https://am.example.com/?x=1"}, want: sink.ErrInvalidSpec},
		{name: "alertmanager webhook secret", spec: sink.Spec{Protocol: "alertmanager", URL: "https://am.example.com/", Secrets: sink.Secrets{WebhookSecrets: []string{secret}}}, want: sink.ErrInvalidSpec},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := sink.New(tt.spec, sink.NewClient(sink.ClientOptions{AllowPrivate: tt.priv}))
			if tt.ok {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				if s.Protocol() != tt.spec.Protocol {
					t.Errorf("Protocol() = %q", s.Protocol())
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("New: %v, want %v", err, tt.want)
			}
			if strings.Contains(err.Error(), secret[8:]) || strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

// TestSecretsNeverShown: printing or logging a Spec or its Secrets shows
// neither the secrets nor the URL's path.
func TestSecretsNeverShown(t *testing.T) {
	spec := sink.Spec{
		Protocol: "webhook",
		URL:      "https://hooks.example.com/services/T0/B0/URLSECRET",
		Secrets: sink.Secrets{
			WebhookSecrets: []string{"whsec_SECRETONE" + strings.Repeat("A", 32)},
			BearerToken:    "BEARERSECRET",
			RoutingKey:     "ROUTINGSECRET",
		},
	}
	var logged bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logged, nil))
	log.Info("subscription", "spec", spec, "secrets", spec.Secrets)
	log.Info("subscription", slog.Any("spec", &spec))
	outputs := []string{
		fmt.Sprint(spec), fmt.Sprintf("%v %+v %#v %s", spec, spec, spec, spec),
		fmt.Sprint(spec.Secrets), fmt.Sprintf("%v %+v %#v %s", spec.Secrets, spec.Secrets, spec.Secrets, spec.Secrets),
		fmt.Sprintf("%v %+v", &spec, &spec.Secrets),
		logged.String(),
	}
	for _, out := range outputs {
		for _, secret := range []string{"SECRETONE", "BEARERSECRET", "ROUTINGSECRET", "URLSECRET"} {
			if strings.Contains(out, secret) {
				t.Errorf("%s shown in %s", secret, out)
			}
		}
	}
	if !strings.Contains(fmt.Sprint(spec), "hooks.example.com") {
		t.Errorf("%v: the host should show", spec)
	}
}
