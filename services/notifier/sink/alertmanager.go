package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Alertmanager settings.
const (
	// SettingTagLabels names Azure tags (comma-separated) that become labels
	// "tag_<name>".
	SettingTagLabels = "tag_labels"
)

// LabelKey is the Alertmanager label holding the alert's stable key (VM and
// condition): how a resolve finds what its condition fired.
const LabelKey = "vigil_key"

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

// Deliver posts a firing notification's alerts; a firing alert ends the
// alerts of its key that carry other labels (the condition's code or
// severity changed: untrusted, then stale). A resolve looks up the alerts
// of its key in Alertmanager (GET /api/v2/alerts, filter vigil_key) and
// posts them back with endsAt: Alertmanager identifies alerts by their
// labels, and a resolve (e.g. vm.recovered, info) does not carry the code
// and severity its condition fired with.
func (m *alertmanager) Deliver(ctx context.Context, n Notification) error {
	if err := checkNotification(n); err != nil {
		return err
	}
	now := m.now()
	if n.State == Resolved {
		return m.resolve(ctx, n, now)
	}
	alerts := AlertmanagerAlertsOf(n, m.tagLabels, now)
	if err := m.post(ctx, alerts); err != nil {
		return err
	}
	if len(n.Digest) == 0 {
		// Best effort: a superseded alert that stays resolves after
		// Alertmanager's resolve_timeout anyway.
		_ = m.supersede(ctx, alerts[0], now)
	}
	return nil
}

func (m *alertmanager) header() http.Header {
	h := http.Header{}
	if m.bearer != "" {
		h.Set("Authorization", "Bearer "+m.bearer)
	}
	return h
}

func (m *alertmanager) post(ctx context.Context, alerts []AlertmanagerAlert) error {
	body, err := json.Marshal(alerts)
	if err != nil {
		return &Error{Kind: Reject, Err: fmt.Errorf("alertmanager: encoding: %w", err)}
	}
	h := m.header()
	h.Set("Content-Type", "application/json")
	_, err = m.c.Do(ctx, http.MethodPost, m.url, h, body)
	return scrub(err, m.bearer)
}

// gettableAlert is what GET /api/v2/alerts returns, the fields used.
type gettableAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	GeneratorURL string            `json:"generatorURL"`
}

// alertsOfKey returns Alertmanager's unresolved alerts labelled with key.
func (m *alertmanager) alertsOfKey(ctx context.Context, key string) ([]gettableAlert, error) {
	q := url.Values{
		"filter": {LabelKey + `="` + matcherValue(key) + `"`},
		"active": {"true"}, "silenced": {"true"}, "inhibited": {"true"}, "unprocessed": {"true"},
	}
	h := m.header()
	h.Set("Accept", "application/json")
	resp, err := m.c.Do(ctx, http.MethodGet, m.url+"?"+q.Encode(), h, nil)
	if err != nil {
		return nil, scrub(err, m.bearer)
	}
	var list []gettableAlert
	if err := json.Unmarshal(resp.Body, &list); err != nil {
		return nil, &Error{Kind: Retry, Err: fmt.Errorf("alertmanager: its alerts of %s do not decode: %w", key, err)}
	}
	return list, nil
}

// matcherValue escapes s for a double-quoted label matcher value.
func matcherValue(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// ended returns g posted back as resolved at end.
func ended(g gettableAlert, end time.Time, why string) AlertmanagerAlert {
	if end.Before(g.StartsAt) {
		end = g.StartsAt
	}
	ann := maps.Clone(g.Annotations)
	if ann == nil {
		ann = map[string]string{}
	}
	if why != "" {
		ann["resolved"] = why
	}
	return AlertmanagerAlert{Labels: g.Labels, Annotations: ann, StartsAt: g.StartsAt.UTC(), EndsAt: end.UTC(), GeneratorURL: linkOrEmpty(g.GeneratorURL)}
}

func (m *alertmanager) resolve(ctx context.Context, n Notification, now time.Time) error {
	end := n.Time
	if end.IsZero() || end.After(now) {
		end = now // a resolve in the future would leave it firing until then
	}
	var out []AlertmanagerAlert
	for _, key := range notificationKeys(n) {
		found, err := m.alertsOfKey(ctx, key)
		if err != nil {
			return err
		}
		for _, g := range found {
			out = append(out, ended(g, end, n.Alert.Message))
		}
	}
	if len(out) == 0 {
		return nil // nothing fires in Alertmanager (never did, or it restarted)
	}
	return m.post(ctx, out)
}

// supersede ends the alerts of posted's key that carry other labels.
func (m *alertmanager) supersede(ctx context.Context, posted AlertmanagerAlert, now time.Time) error {
	found, err := m.alertsOfKey(ctx, posted.Labels[LabelKey])
	if err != nil {
		return err
	}
	var out []AlertmanagerAlert
	for _, g := range found {
		if !maps.Equal(g.Labels, posted.Labels) {
			out = append(out, ended(g, now, "superseded by "+posted.Labels["alertname"]))
		}
	}
	if len(out) == 0 {
		return nil
	}
	return m.post(ctx, out)
}

// alertKey is an alert's stable key: its own, the notification's for the
// notification's alert, else "<vm>/<code>".
func alertKey(n Notification, a events.Alert, first bool) string {
	switch {
	case first && n.Key != "":
		return n.Key
	case a.Key != "":
		return a.Key
	}
	vm := a.VMKey
	if vm == "" {
		vm = "fleet"
	}
	return events.AlertKey(vm, a.Code)
}

// notificationKeys lists the distinct keys of n's alerts.
func notificationKeys(n Notification) []string {
	if len(n.Digest) == 0 {
		return []string{alertKey(n, n.Alert, true)}
	}
	var keys []string
	seen := map[string]bool{}
	for i, a := range n.Digest {
		k := alertKey(n, a, i == 0 && n.Alert.Key == a.Key && n.Alert.VMKey == a.VMKey)
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	return keys
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

// AlertmanagerAlertsOf returns the alerts an Alertmanager sink posts for a
// firing n at now: one alert, or one per digest entry (Alertmanager groups
// them itself). Labels: alertname and code (the alert code), severity, vm
// (the VM key, "fleet" if none), vigil_key (the alert's stable key, which a
// resolve looks up), source "vigil", and from the inventory vm_name,
// resource_group, subscription, platform and the tags named in tagLabels.
// endsAt is left out: Alertmanager resolves the alert after its
// resolve_timeout unless it is sent again, which the notifier does while
// the condition lasts. For a resolved n, the same alerts with endsAt (the
// resolve time): what resolving these label sets posts (the sink itself
// resolves the alerts Alertmanager holds under the key).
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
		first := len(n.Digest) == 0 || i == 0 && n.Alert.Key == a.Key && n.Alert.VMKey == a.VMKey
		out = append(out, alertmanagerAlert(n, a, alertKey(n, a, first), vm, tagLabels, now))
	}
	return out
}

func alertmanagerAlert(n Notification, a events.Alert, key string, vm *VMInfo, tagLabels []string, now time.Time) AlertmanagerAlert {
	vmKey := a.VMKey
	if vmKey == "" {
		vmKey = "fleet"
	}
	labels := map[string]string{
		"alertname": a.Code,
		"code":      a.Code,
		"severity":  string(a.Severity),
		"vm":        vmKey,
		LabelKey:    key,
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
	am := AlertmanagerAlert{Labels: labels, Annotations: ann, StartsAt: a.At.UTC(), GeneratorURL: linkOrEmpty(n.ConsoleURL)}
	if n.State == Resolved {
		end := n.Time
		if end.IsZero() || end.After(now) {
			end = now
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
