package notifier

import (
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func TestFilterMatch(t *testing.T) {
	a := events.Alert{Severity: events.SeverityHigh, Code: "vm.stale", VMKey: "vmkey1", Key: "vmkey1/attestation", Source: "attest-worker"}
	vm := &sink.VMInfo{Name: "web-01", ResourceGroup: "prod-rg", Subscription: "sub1", Tags: map[string]string{"team": "payments"}}
	attrs := Attributes(a, vm)
	tests := []struct {
		name string
		f    Filter
		want bool
	}{
		{"empty", Filter{}, true},
		{"exact code", Filter{Exact: map[string]string{"code": "vm.stale"}}, true},
		{"exact other code", Filter{Exact: map[string]string{"code": "vm.untrusted"}}, false},
		{"prefix", Filter{Prefix: map[string]string{"code": "vm."}}, true},
		{"suffix", Filter{Suffix: map[string]string{"resource_group": "-rg"}}, true},
		{"glob name", Filter{Glob: map[string]string{"vm_name": "web-*"}}, true},
		{"glob other name", Filter{Glob: map[string]string{"vm_name": "db-*"}}, false},
		{"tag", Filter{Exact: map[string]string{"tag.team": "payments"}}, true},
		{"missing tag", Filter{Exact: map[string]string{"tag.owner": "x"}}, false},
		{"severity at least high", Filter{SeverityAtLeast: events.SeverityHigh}, true},
		{"severity at least critical", Filter{SeverityAtLeast: events.SeverityCritical}, false},
		{"all", Filter{All: []Filter{{Prefix: map[string]string{"code": "vm."}}, {Exact: map[string]string{"vm": "vmkey1"}}}}, true},
		{"all one fails", Filter{All: []Filter{{Prefix: map[string]string{"code": "vm."}}, {Exact: map[string]string{"vm": "other"}}}}, false},
		{"any", Filter{Any: []Filter{{Exact: map[string]string{"code": "x"}}, {Exact: map[string]string{"state": "firing"}}}}, true},
		{"any none", Filter{Any: []Filter{{Exact: map[string]string{"code": "x"}}, {Exact: map[string]string{"code": "y"}}}}, false},
		{"not", Filter{Not: &Filter{Exact: map[string]string{"code": "vm.stale"}}}, false},
		{"not other", Filter{Not: &Filter{Exact: map[string]string{"code": "vm.untrusted"}}}, true},
		{"dialects together", Filter{Exact: map[string]string{"source": "attest-worker"}, SeverityAtLeast: events.SeverityCritical}, false},
	}
	for _, tc := range tests {
		if err := tc.f.Validate(); err != nil {
			t.Errorf("%s: %v", tc.name, err)
		}
		if got := tc.f.Match(attrs); got != tc.want {
			t.Errorf("%s: Match = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFilterValidate(t *testing.T) {
	for name, f := range map[string]Filter{
		"bad glob":            {Glob: map[string]string{"vm_name": "["}},
		"bad severity":        {SeverityAtLeast: "loud"},
		"bad nested severity": {Any: []Filter{{SeverityAtLeast: "loud"}}},
		"bad negated glob":    {Not: &Filter{Glob: map[string]string{"vm": "[a"}}},
	} {
		if err := f.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestSealedSpecOpensOnlyForItsSubscription: a sealed sink opens with the
// notifier's key for the subscription it was sealed for, not another.
func TestSealedSpecOpensOnlyForItsSubscription(t *testing.T) {
	path := t.TempDir() + "/key"
	if err := GenerateKeyFile(path); err != nil {
		t.Fatal(err)
	}
	k, err := LoadKeyFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secrets := sink.Secrets{WebhookSecrets: []string{"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, BearerToken: "tok"}
	sealed, err := SealSpec(k.PublicKey(), "a", "https://example.com/hook?token=x", secrets)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := k.open(Subscription{ID: "a", Protocol: "webhook", Sealed: sealed})
	if err != nil || spec.URL != "https://example.com/hook?token=x" || spec.Secrets.BearerToken != "tok" {
		t.Fatalf("open: %v %v", spec, err)
	}
	if _, err := k.open(Subscription{ID: "b", Protocol: "webhook", Sealed: sealed}); err == nil {
		t.Error("a sealed sink opened for another subscription")
	}
	if err := GenerateKeyFile(path); err == nil {
		t.Error("GenerateKeyFile overwrote a key")
	}
}
