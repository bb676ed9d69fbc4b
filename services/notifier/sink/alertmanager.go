package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Alertmanager settings.
const (
	// SettingTagLabels names Azure tags (comma-separated) that become labels
	// "tag_<name>". Labels identify an alert in Alertmanager, so only tags
	// that do not change while an alert fires belong there.
	SettingTagLabels = "tag_labels"
)

// AlertmanagerAlert is one element of the JSON array POSTed to
// Alertmanager's /api/v2/alerts (its postableAlert).
type AlertmanagerAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	StartsAt     time.Time         `json:"startsAt,omitzero"`
	EndsAt       time.Time         `json:"endsAt,omitzero"`
	GeneratorURL string            `json:"generatorURL,omitempty"`
}

type alertmanager struct {
	c         *Client
	url       string // .../api/v2/alerts
	bearer    string
	tagLabels []string
	now       func() time.Time
}

var labelName = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

func newAlertmanager(spec Spec, c *Client) (*alertmanager, error) {
	if err := checkSettings(spec, []string{SettingTagLabels}); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, true, false); err != nil {
		return nil, err
	}
	var tags []string
	if v := spec.Settings[SettingTagLabels]; v != "" {
		for t := range strings.SplitSeq(v, ",") {
			t = strings.TrimSpace(t)
			if t == "" {
				continue
			}
			if !labelName.MatchString("tag_" + LabelName(t)) {
				return nil, fmt.Errorf("%w: tag %q cannot become a label", ErrInvalidSpec, t)
			}
			tags = append(tags, t)
		}
	}
	u, err := c.CheckURL(spec.URL)
	if err != nil {
		return nil, err
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("%w: the Alertmanager URL is a base URL (no query)", ErrInvalidSpec)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.Path = strings.TrimSuffix(u.Path, "/api/v2/alerts") + "/api/v2/alerts"
	u.RawPath = ""
	return &alertmanager{c: c, url: u.String(), bearer: spec.Secrets.BearerToken, tagLabels: tags, now: time.Now}, nil
}

func (m *alertmanager) Protocol() string { return ProtocolAlertmanager }

func (m *alertmanager) Deliver(ctx context.Context, n Notification) error {
	if err := checkNotification(n); err != nil {
		return err
	}
	body, err := json.Marshal(AlertmanagerAlertsOf(n, m.tagLabels, m.now()))
	if err != nil {
		return &Error{Kind: Reject, Err: fmt.Errorf("alertmanager: encoding: %w", err)}
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	if m.bearer != "" {
		h.Set("Authorization", "Bearer "+m.bearer)
	}
	_, err = m.c.Do(ctx, http.MethodPost, m.url, h, body)
	return scrub(err, m.bearer)
}

// LabelName turns s into a valid Prometheus label name: characters other
// than [a-zA-Z0-9_] become '_', and a leading digit gets a '_' before it.
func LabelName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			b[i] = '_'
		}
	}
	if len(b) == 0 || b[0] >= '0' && b[0] <= '9' {
		return "_" + string(b)
	}
	return string(b)
}

// AlertmanagerAlertsOf returns the alerts an Alertmanager sink posts for n
// at now: one alert, or one per digest entry (Alertmanager groups them
// itself). Labels identify an alert in Alertmanager and are the same
// whether it fires or resolves: alertname (the alert code), severity, vm
// (the VM key, "fleet" if none), code, source "vigil", and from the
// inventory vm_name, resource_group, subscription, platform and the tags
// named in tagLabels. While firing, endsAt is left out (Alertmanager
// resolves the alert after its resolve_timeout unless it is sent again,
// which the notifier does); a resolve sets endsAt to the resolve time.
func AlertmanagerAlertsOf(n Notification, tagLabels []string, now time.Time) []AlertmanagerAlert {
	list := n.Digest
	if len(list) == 0 {
		list = []events.Alert{n.Alert}
	}
	out := make([]AlertmanagerAlert, 0, len(list))
	for i, a := range list {
		var vm *VMInfo
		if i == 0 || a.VMKey == n.Alert.VMKey {
			vm = n.VM // inventory context is the first alert's
		}
		out = append(out, alertmanagerAlert(n, a, vm, tagLabels, now))
	}
	return out
}

func alertmanagerAlert(n Notification, a events.Alert, vm *VMInfo, tagLabels []string, now time.Time) AlertmanagerAlert {
	vmKey := a.VMKey
	if vmKey == "" {
		vmKey = "fleet"
	}
	labels := map[string]string{
		"alertname": a.Code,
		"code":      a.Code,
		"severity":  string(a.Severity),
		"vm":        vmKey,
		"source":    "vigil",
	}
	if vm != nil {
		set := func(k, v string) {
			if v != "" {
				labels[k] = v
			}
		}
		set("vm_name", vm.Name)
		set("resource_group", vm.ResourceGroup)
		set("subscription", vm.Subscription)
		set("platform", vm.Platform)
		for _, t := range tagLabels {
			if v, ok := vm.Tags[t]; ok && v != "" {
				labels["tag_"+LabelName(t)] = v
			}
		}
	}
	name := vmKey
	if vm != nil && vm.Name != "" {
		name = vm.Name
	}
	ann := map[string]string{
		"summary":     fmt.Sprintf("%s on %s", a.Code, name),
		"description": a.Message,
	}
	if rs := reasonLines(a.Reasons); len(rs) > 0 {
		ann["reasons"] = strings.Join(rs, "\n")
	}
	if a.ResourceID != "" {
		ann["resource_id"] = a.ResourceID
	}
	if n.Key != "" && len(n.Digest) == 0 {
		ann["vigil_key"] = n.Key
	}
	am := AlertmanagerAlert{Labels: labels, Annotations: ann, StartsAt: a.At.UTC(), GeneratorURL: linkOrEmpty(n.ConsoleURL)}
	if n.State == Resolved {
		end := n.Time
		if end.IsZero() || end.After(now) {
			end = now // a resolve in the future would leave it firing until then
		}
		am.EndsAt = end.UTC()
		if am.StartsAt.IsZero() || am.StartsAt.After(am.EndsAt) {
			am.StartsAt = am.EndsAt
		}
	}
	return am
}

func linkOrEmpty(u string) string {
	if u != "" && safeLink(u) {
		return u
	}
	return ""
}
