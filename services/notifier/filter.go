package notifier

import (
	"fmt"
	"path"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// Filter is a CloudEvents Subscriptions API filter over an alert's
// attributes (Attributes), in its dialects exact, prefix, suffix, all, any
// and not, and two of Vigil's: glob (path.Match patterns, for VM names)
// and severity_at_least. Every dialect a filter sets must hold.
type Filter struct {
	Exact           map[string]string `json:"exact,omitempty"`
	Prefix          map[string]string `json:"prefix,omitempty"`
	Suffix          map[string]string `json:"suffix,omitempty"`
	All             []Filter          `json:"all,omitempty"`
	Any             []Filter          `json:"any,omitempty"`
	Not             *Filter           `json:"not,omitempty"`
	Glob            map[string]string `json:"glob,omitempty"`
	SeverityAtLeast events.Severity   `json:"severity_at_least,omitempty"`
}

// Attribute names of an alert, what filters and silences match on. Azure
// tags are "tag.<name>".
const (
	AttrSeverity      = "severity"
	AttrCode          = "code"
	AttrVM            = "vm" // the VM key
	AttrVMName        = "vm_name"
	AttrResourceGroup = "resource_group"
	AttrSubscription  = "subscription"
	AttrKey           = "key"
	AttrState         = "state"
	AttrSource        = "source"
	AttrTagPrefix     = "tag."
)

// Attributes are the attributes of alert a, with vm the inventory of its
// VM (nil when unknown).
func Attributes(a events.Alert, vm *sink.VMInfo) map[string]string {
	state := string(a.State)
	if state == "" {
		state = string(events.AlertFiring)
	}
	m := map[string]string{
		AttrSeverity: string(a.Severity),
		AttrCode:     a.Code,
		AttrVM:       a.VMKey,
		AttrKey:      a.Key,
		AttrState:    state,
		AttrSource:   a.Source,
	}
	if vm != nil {
		m[AttrVMName] = vm.Name
		m[AttrResourceGroup] = vm.ResourceGroup
		m[AttrSubscription] = vm.Subscription
		for k, v := range vm.Tags {
			m[AttrTagPrefix+k] = v
		}
	}
	return m
}

// Validate checks the filter's patterns and severity.
func (f Filter) Validate() error {
	for attr, p := range f.Glob {
		if _, err := path.Match(p, ""); err != nil {
			return fmt.Errorf("%w: glob %s=%q: %w", ErrInvalid, attr, p, err)
		}
	}
	if f.SeverityAtLeast != "" && severityRank(f.SeverityAtLeast) == 0 {
		return fmt.Errorf("%w: severity_at_least %q: want info, warning, high or critical", ErrInvalid, f.SeverityAtLeast)
	}
	for _, sub := range append(append([]Filter(nil), f.All...), f.Any...) {
		if err := sub.Validate(); err != nil {
			return err
		}
	}
	if f.Not != nil {
		return f.Not.Validate()
	}
	return nil
}

// Match reports whether attrs satisfy the filter. An attribute the alert
// does not have satisfies no exact, prefix, suffix or glob condition.
func (f Filter) Match(attrs map[string]string) bool {
	has := func(conds map[string]string, ok func(v, want string) bool) bool {
		for attr, want := range conds {
			v, present := attrs[attr]
			if !present || v == "" && want != "" || !ok(v, want) {
				return false
			}
		}
		return true
	}
	if !has(f.Exact, func(v, w string) bool { return v == w }) ||
		!has(f.Prefix, strings.HasPrefix) ||
		!has(f.Suffix, strings.HasSuffix) ||
		!has(f.Glob, func(v, w string) bool { ok, _ := path.Match(w, v); return ok }) {
		return false
	}
	if f.SeverityAtLeast != "" && severityRank(events.Severity(attrs[AttrSeverity])) < severityRank(f.SeverityAtLeast) {
		return false
	}
	for _, sub := range f.All {
		if !sub.Match(attrs) {
			return false
		}
	}
	if len(f.Any) > 0 {
		any := false
		for _, sub := range f.Any {
			if sub.Match(attrs) {
				any = true
				break
			}
		}
		if !any {
			return false
		}
	}
	return f.Not == nil || !f.Not.Match(attrs)
}

// matchAll reports whether every filter matches attrs.
func matchAll(fs []Filter, attrs map[string]string) bool {
	for _, f := range fs {
		if !f.Match(attrs) {
			return false
		}
	}
	return true
}

// MatchGlobs reports whether every attribute of match has a value matching
// its path.Match pattern (a silence's --match).
func MatchGlobs(match, attrs map[string]string) bool {
	for attr, p := range match {
		if ok, _ := path.Match(p, attrs[attr]); !ok {
			return false
		}
	}
	return len(match) > 0
}
