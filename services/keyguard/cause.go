package keyguard

import (
	"fmt"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// trigger is what an event asks of a VM's grants.
type trigger int

const (
	triggerNone    trigger = iota
	triggerRevoke          // untrusted, stale, retired: revoke every grant
	triggerSuspend         // stopped, deallocated: no release while stopped
	triggerResume          // trusted or warning: end a suspension; restore when policy allows
)

func (t trigger) String() string {
	switch t {
	case triggerRevoke:
		return "revoke"
	case triggerSuspend:
		return "suspend"
	case triggerResume:
		return "resume"
	}
	return "none"
}

// cause is an event that bears on a VM's grants. It carries no vmId: the
// vmIds events carry (a verdict's may even come from the evidence) are never
// written into a grant or used to revoke; keyguard asks the inventory
// (trustedVMID) when it needs one.
type cause struct {
	trigger    trigger
	vm         string
	resourceID string
	// status is the revocation cause (stale, untrusted, retired, operator)
	// or, for resume, the status the VM reached.
	status  string
	reason  string
	reasons []events.Reason
	id      string    // envelope id, or admin request id
	at      time.Time // when the cause happened
	seq     uint64    // VIGIL_EVENTS stream sequence; 0 for admin actions
	actor   string
}

// classify reads an event from VIGIL_EVENTS. Events that do not bear on
// grants give triggerNone; an unreadable payload is an error.
func classify(env events.Envelope, subject string, seq uint64) (cause, error) {
	c := cause{id: env.ID, at: env.Time, seq: seq, actor: "keyguard"}
	vmFromSubject := events.VMFromSubject(subject)
	switch env.Type {
	case events.TypeVerdict:
		var v events.Verdict
		if err := env.Decode(events.TypeVerdict, &v); err != nil {
			return c, err
		}
		c.vm, c.resourceID = v.VMKey, v.ResourceID
		if !v.IssuedAt.IsZero() {
			c.at = v.IssuedAt
		}
		if v.Status == events.VerdictContraindicated {
			c.trigger, c.status = triggerRevoke, grants.CauseUntrusted
			c.reasons = v.Reasons
			c.reason = "verdict contraindicated" + reasonCodes(v.Reasons)
		}
	case events.TypeState:
		var s events.State
		if err := env.Decode(events.TypeState, &s); err != nil {
			return c, err
		}
		c.vm, c.resourceID = s.VMKey, s.ResourceID
		if !s.ChangedAt.IsZero() {
			c.at = s.ChangedAt
		}
		c.reasons = s.Reasons
		switch {
		case s.To.Revokes():
			c.trigger, c.status = triggerRevoke, string(s.To)
			c.reason = fmt.Sprintf("status %s -> %s%s", s.From, s.To, reasonCodes(s.Reasons))
		case s.To == events.StatusSuspended:
			c.trigger, c.status = triggerSuspend, string(s.To)
			c.reason = fmt.Sprintf("status %s -> %s", s.From, s.To)
		case s.To.Releasable():
			c.trigger, c.status = triggerResume, string(s.To)
			c.reason = fmt.Sprintf("status %s -> %s", s.From, s.To)
		}
	case events.TypeLifecycle:
		var l events.Lifecycle
		if err := env.Decode(events.TypeLifecycle, &l); err != nil {
			return c, err
		}
		c.vm, c.resourceID = l.VMKey, l.ResourceID
		if !l.OccurredAt.IsZero() {
			c.at = l.OccurredAt
		}
		if l.Outcome != "" && !strings.EqualFold(l.Outcome, "Succeeded") {
			return c, nil // the operation did not happen
		}
		if l.Superseded {
			return c, nil // on record only: a newer event already decided the VM's state
		}
		switch l.Kind {
		case events.LifecycleDeleted:
			c.trigger, c.status = triggerRevoke, grants.CauseRetired
			c.reason = "vm deleted"
		case events.LifecycleStopped, events.LifecycleDeallocated:
			c.trigger, c.status = triggerSuspend, string(events.StatusSuspended)
			c.reason = "vm " + string(l.Kind)
		}
	default:
		return c, nil
	}
	if c.vm == "" {
		c.vm = vmFromSubject
	}
	if !events.ValidVMKey(c.vm) {
		return c, fmt.Errorf("keyguard: %s event %s names no valid VM key (%q)", env.Type, env.ID, c.vm)
	}
	if vmFromSubject != "" && vmFromSubject != c.vm {
		return c, fmt.Errorf("keyguard: %s event %s on subject %s names VM %s", env.Type, env.ID, subject, c.vm)
	}
	return c, nil
}

func reasonCodes(rs []events.Reason) string {
	if len(rs) == 0 {
		return ""
	}
	codes := make([]string, 0, len(rs))
	for i, r := range rs {
		if i == 8 {
			codes = append(codes, "...")
			break
		}
		codes = append(codes, r.Code)
	}
	return " (" + strings.Join(codes, ", ") + ")"
}

// classifyMessage is classify for a consumed message.
func classifyMessage(m *bus.Message) (cause, error) {
	var seq uint64
	if m.Meta != nil {
		seq = m.Meta.Sequence.Stream
	}
	return classify(m.Envelope, m.Msg.Subject(), seq)
}

// transition applies c to g and returns the key action it amounts to ("" when
// the grant's state did not change) and whether g changed at all. It does
// not consider sequence numbers; the caller does.
func transition(g *grants.Grant, c cause, restore RestorePolicy, now time.Time) (events.KeyAction, bool) {
	local := g.Backend == BackendLocal
	set := func(state grants.State, applied bool) {
		g.State = state
		g.Action = map[grants.State]events.KeyAction{grants.Active: events.KeyRestored, grants.Suspended: events.KeySuspended, grants.Revoked: events.KeyRevoked}[state]
		g.Reason, g.Actor, g.CauseID, g.CauseTime = clipReason(c.reason), c.actor, c.id, c.at
		g.Applied = applied
		g.ApplyError, g.ApplyAttempts = "", 0
		g.ChangedAt = now
		if applied {
			g.AppliedAt = now
		}
	}
	switch c.trigger {
	case triggerRevoke:
		if g.State == grants.Revoked {
			if worse := grants.Graver(g.RevokedFor, c.status); worse != g.RevokedFor {
				g.RevokedFor = worse
				return "", true
			}
			return "", false
		}
		set(grants.Revoked, local)
		g.RevokedFor = c.status
		return events.KeyRevoked, true
	case triggerSuspend:
		if g.State != grants.Active {
			return "", false
		}
		// Suspension only stops the local release service: a stopped VM
		// cannot ask Key Vault for anything.
		set(grants.Suspended, true)
		return events.KeySuspended, true
	case triggerResume:
		switch g.State {
		case grants.Suspended:
			set(grants.Active, true)
			return events.KeyRestored, true
		case grants.Revoked:
			if !restore.Allows(g.RevokedFor) {
				return "", false
			}
			c.reason = "automatic restore after " + g.RevokedFor + ": " + c.reason
			set(grants.Active, local)
			g.RevokedFor = ""
			return events.KeyRestored, true
		}
	}
	return "", false
}

func clipReason(s string) string {
	if len(s) > 512 {
		return s[:509] + "..."
	}
	return s
}
