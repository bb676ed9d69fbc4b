package sink

import (
	"fmt"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Text shared by the chat sinks (Slack, Teams).

// vmLabel names the alert's VM for people: the inventory name, else the VM
// key, else "fleet".
func vmLabel(n Notification) string {
	if n.VM != nil && n.VM.Name != "" {
		return n.VM.Name
	}
	if n.Alert.VMKey != "" {
		return n.Alert.VMKey
	}
	return "fleet"
}

// title is a notification's one-line title, e.g. "Firing: vm.untrusted on
// web-01" or "Resolved: vm.untrusted on web-01"; for a digest "37 alerts
// firing: vm.untrusted".
func title(n Notification) string {
	state := "Firing"
	if n.State == Resolved {
		state = "Resolved"
	}
	if len(n.Digest) > 0 {
		return fmt.Sprintf("%d alerts %s: %s", len(n.Digest), strings.ToLower(state), digestCodes(n.Digest))
	}
	return fmt.Sprintf("%s: %s on %s", state, n.Alert.Code, vmLabel(n))
}

// digestCodes names the codes of a digest: one code, or the first and how
// many others.
func digestCodes(d []events.Alert) string {
	seen := map[string]bool{}
	var codes []string
	for _, a := range d {
		if !seen[a.Code] {
			seen[a.Code] = true
			codes = append(codes, a.Code)
		}
	}
	switch len(codes) {
	case 0:
		return ""
	case 1:
		return codes[0]
	}
	return fmt.Sprintf("%s and %d other codes", codes[0], len(codes)-1)
}

// severityMark is an emoji for a severity (resolved: a check mark).
func severityMark(n Notification) string {
	if n.State == Resolved {
		return "✅"
	}
	switch n.Alert.Severity {
	case events.SeverityCritical:
		return "🔴"
	case events.SeverityHigh:
		return "🟠"
	case events.SeverityWarning:
		return "🟡"
	}
	return "🔵"
}

// reasonLines lists an alert's reasons, one "code: message" a line.
func reasonLines(rs []events.Reason) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		if r.Message != "" {
			out = append(out, r.Code+": "+r.Message)
		} else {
			out = append(out, r.Code)
		}
	}
	return out
}

// digestLine is one line of a digest's list.
func digestLine(a events.Alert) string {
	vm := a.VMKey
	if vm == "" {
		vm = "fleet"
	}
	return fmt.Sprintf("%s [%s] %s: %s", vm, a.Severity, a.Code, a.Message)
}
