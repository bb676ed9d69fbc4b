package keyguard

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// consumerConfig is the durable consumer of the events keyguard acts on.
func consumerConfig(name string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:     name,
		Description: "keyguard: verdicts, status changes and lifecycle events",
		FilterSubjects: []string{
			events.VMEventSubject("*", events.KindVerdict),
			events.VMEventSubject("*", events.KindState),
			events.VMEventSubject("*", events.KindLifecycle),
		},
		// A new deployment starts from now; grants created later take the
		// VM's current status into account, and reconciliation compares
		// every grant with vigil-status.
		DeliverPolicy: jetstream.DeliverNewPolicy,
		AckWait:       30 * time.Second,
	}
}

// handle is the bus.Handler for VIGIL_EVENTS.
func (k *Keyguard) handle(ctx context.Context, m *bus.Message) error {
	c, err := classifyMessage(m)
	if err != nil {
		return bus.Permanent(err)
	}
	if c.trigger == triggerNone {
		return nil
	}
	return k.act(ctx, c)
}

// outcome is what act did to one grant.
type outcome struct {
	grant  grants.Grant
	action events.KeyAction // "" when nothing took effect now
	// redo is set when c had already been applied to the grant by an
	// earlier delivery: its events are published again (deduplicated).
	redo bool
}

// act applies c to every grant of c.vm.
func (k *Keyguard) act(ctx context.Context, c cause) error {
	keys, err := k.grants.Keys(ctx, c.vm)
	if err != nil {
		return err
	}
	var outs []outcome
	var firstErr error
	for _, key := range keys {
		o, err := k.actOn(ctx, key, c)
		if err != nil {
			if errors.Is(err, grants.ErrNotFound) {
				continue // deleted meanwhile
			}
			k.log.ErrorContext(ctx, "apply event to grant", "grant", key, "cause", c.id, "err", err)
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if o.action != "" || o.redo {
			outs = append(outs, o)
		}
	}
	// Effects on the local backend are in force now; tell everyone.
	var revoked []grants.Grant
	for _, o := range outs {
		g := o.grant
		if g.State == grants.Revoked && g.CauseID == c.id {
			revoked = append(revoked, g)
		}
		if g.Applied {
			if err := k.publishKey(ctx, g, keyActionOf(g), c.at); err != nil && firstErr == nil {
				firstErr = err
			}
		} else {
			k.kick(g.Key())
		}
	}
	if len(revoked) > 0 {
		if err := k.alertRevoked(ctx, c, revoked); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if c.trigger == triggerRevoke {
		// The VM loses the bus with its keys, grants or none.
		if err := k.revokeAgent(ctx, c); err != nil {
			k.log.ErrorContext(ctx, "revoke agent credentials", "vm", c.vm, "cause", c.id, "err", err)
			if firstErr == nil {
				firstErr = err
			}
		}
	}
	if c.trigger == triggerResume {
		if err := k.alertRestoreRequired(ctx, c, keys); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	return firstErr
}

// actOn applies c to one grant with compare-and-set.
func (k *Keyguard) actOn(ctx context.Context, key string, c cause) (outcome, error) {
	var o outcome
	e, wrote, err := k.grants.Update(ctx, key, func(g *grants.Grant) (bool, error) {
		o = outcome{}
		if c.seq != 0 {
			switch {
			case c.seq < g.CauseSeq:
				return false, nil // older than what the grant reflects
			case c.seq == g.CauseSeq:
				o.redo = g.CauseID == c.id
				return false, nil
			}
		}
		action, changed := transition(g, c, k.cfg.Restore, time.Now().UTC())
		o.action = action
		if c.seq != 0 && c.seq > g.CauseSeq {
			g.CauseSeq = c.seq
			changed = true
		}
		return changed, nil
	})
	if err != nil {
		return outcome{}, err
	}
	o.grant = e.Grant
	if wrote && o.action != "" {
		k.metrics.transitions.Add(ctx, 1, metric.WithAttributes(attribute.String("action", string(o.action)), attribute.String("backend", e.Backend)))
		k.log.InfoContext(ctx, "grant "+string(o.action), "vm", e.VMKey, "key", e.KeyName, "backend", e.Backend,
			"state", e.State, "reason", e.Reason, "cause", c.id, "applied", e.Applied)
	}
	return o, nil
}

// keyActionOf is the key event a grant's last change amounts to.
func keyActionOf(g grants.Grant) events.KeyAction {
	if g.Action != "" {
		return g.Action
	}
	switch g.State {
	case grants.Revoked:
		return events.KeyRevoked
	case grants.Suspended:
		return events.KeySuspended
	}
	return events.KeyGranted
}

// eventID derives a stable event id from its parts, so that publishing the
// same fact twice (redelivery, two replicas) is stored once.
func eventID(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}

// publishKey publishes io.vigil.vm.key.v1 for g's current state.
func (k *Keyguard) publishKey(ctx context.Context, g grants.Grant, action events.KeyAction, causeAt time.Time) error {
	key := events.Key{
		VMKey:   g.VMKey,
		VMID:    g.VMID,
		Action:  action,
		KeyName: g.KeyName,
		Backend: g.Backend,
		Reason:  g.Reason,
		Actor:   g.Actor,
		CauseID: g.CauseID,
		At:      g.AppliedAt,
	}
	if key.At.IsZero() {
		key.At = time.Now().UTC()
	}
	if !causeAt.IsZero() {
		key.LatencyMS = float64(key.At.Sub(causeAt).Microseconds()) / 1000
		if key.LatencyMS < 0 {
			key.LatencyMS = 0
		}
		if action == events.KeyRevoked {
			k.metrics.revocationLatency.Record(ctx, key.LatencyMS/1000, metric.WithAttributes(attribute.String("backend", g.Backend)))
		}
	}
	subject := events.KeySubject(g.VMKey)
	env, err := events.New(events.TypeKey, k.cfg.Source, subject, key)
	if err != nil {
		return err
	}
	env.ID = eventID("key", g.Key(), g.CauseID, string(action))
	if _, err := k.conn.Publish(ctx, subject, env); err != nil {
		return fmt.Errorf("keyguard: publish %s event for %s: %w", action, g.Key(), err)
	}
	return nil
}

// alertRevoked raises one critical alert for the grants of a VM that c
// revoked.
func (k *Keyguard) alertRevoked(ctx context.Context, c cause, revoked []grants.Grant) error {
	names := make([]string, 0, len(revoked))
	for _, g := range revoked {
		names = append(names, g.KeyName+"@"+g.Backend)
	}
	sort.Strings(names)
	a := events.Alert{
		Severity:   events.SeverityCritical,
		Code:       "key.revoked",
		VMKey:      c.vm,
		ResourceID: c.resourceID,
		Message:    fmt.Sprintf("keyguard revoked %d key grant(s) of VM %s (%s): %s", len(revoked), c.vm, c.reason, strings.Join(names, ", ")),
		Reasons:    c.reasons,
		CauseID:    c.id,
		Source:     k.cfg.Source,
		At:         time.Now().UTC(),
	}
	return k.conn.PublishAlert(ctx, k.cfg.Source, eventID("alert", "revoked", c.vm, c.id), a)
}

// alertRestoreRequired tells operators that a VM is trusted again while
// some of its grants stay revoked until they restore them.
func (k *Keyguard) alertRestoreRequired(ctx context.Context, c cause, keys []string) error {
	var held []string
	for _, key := range keys {
		e, err := k.grants.Get(ctx, key)
		if err != nil {
			if errors.Is(err, grants.ErrNotFound) {
				continue
			}
			return err
		}
		if e.State == grants.Revoked {
			held = append(held, e.KeyName+"@"+e.Backend)
		}
	}
	if len(held) == 0 {
		return nil
	}
	a := events.Alert{
		Severity:   events.SeverityWarning,
		Code:       "key.restore_required",
		VMKey:      c.vm,
		ResourceID: c.resourceID,
		Message: fmt.Sprintf("VM %s is %s again; its revoked grants stay revoked until restored with `vigil keyguard restore %s --reason ...`: %s",
			c.vm, c.status, c.vm, strings.Join(held, ", ")),
		CauseID: c.id,
		Source:  k.cfg.Source,
		At:      time.Now().UTC(),
		Key:     restoreAlertKey(c.vm),
		State:   events.AlertFiring,
	}
	return k.conn.PublishAlert(ctx, k.cfg.Source, eventID("alert", "restore_required", c.vm, c.id), a)
}

// restoreAlertKey is the alert key of a VM's grants awaiting an
// operator's restore (key.restore_required).
func restoreAlertKey(vm string) string { return events.AlertKey(vm, "key.restore") }

// resolveRestoreRequired resolves key.restore_required once an operator's
// restore leaves none of the VM's grants revoked (key.restored, info).
func (k *Keyguard) resolveRestoreRequired(ctx context.Context, c cause) {
	entries, err := k.grants.List(ctx, c.vm)
	if err != nil {
		k.log.WarnContext(ctx, "list grants after a restore", "vm", c.vm, "err", err)
		return
	}
	for _, e := range entries {
		if e.State == grants.Revoked {
			return
		}
	}
	a := events.Alert{
		Severity:   events.SeverityInfo,
		Code:       "key.restored",
		VMKey:      c.vm,
		ResourceID: c.resourceID,
		Message:    fmt.Sprintf("the grants of VM %s are restored (%s: %s)", c.vm, c.actor, c.reason),
		CauseID:    c.id,
		Source:     k.cfg.Source,
		At:         time.Now().UTC(),
		Key:        restoreAlertKey(c.vm),
		State:      events.AlertResolved,
	}
	if err := k.conn.PublishAlert(ctx, k.cfg.Source, eventID("alert", "restored", c.vm, c.id), a); err != nil {
		k.log.ErrorContext(ctx, "publish alert", "code", a.Code, "err", err)
	}
}

// applyState is where a grant stands with the apply workers.
type applyState uint8

const (
	applyQueued  applyState = iota + 1 // on the work queue
	applyRunning                       // a worker is applying it
	applyAgain                         // a worker is applying it, and it was kicked meanwhile
)

// kick asks an apply worker to bring grant key's backend in line with its
// state. It never blocks: when the queue is full, reconciliation picks the
// grant up. A grant is applied by one worker at a time: kicked while a
// worker applies it, it is queued again once that worker is done, so a slow
// backend call for an older state can never land after the call for a newer
// one made here.
func (k *Keyguard) kick(key string) {
	k.pendingMu.Lock()
	switch k.pending[key] {
	case applyQueued, applyAgain:
		k.pendingMu.Unlock()
		return
	case applyRunning:
		k.pending[key] = applyAgain
		k.pendingMu.Unlock()
		return
	}
	k.pending[key] = applyQueued
	k.pendingMu.Unlock()
	select {
	case k.work <- key:
	default:
		k.pendingMu.Lock()
		delete(k.pending, key)
		k.pendingMu.Unlock()
	}
}

// applyWorker runs remote backend operations.
func (k *Keyguard) applyWorker(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case key := <-k.work:
			k.pendingMu.Lock()
			k.pending[key] = applyRunning
			k.pendingMu.Unlock()
			if err := k.apply(ctx, key); err != nil && ctx.Err() == nil {
				k.log.WarnContext(ctx, "backend apply failed; will retry at reconciliation", "grant", key, "err", err)
			}
			k.pendingMu.Lock()
			again := k.pending[key] == applyAgain
			delete(k.pending, key)
			k.pendingMu.Unlock()
			if again && ctx.Err() == nil {
				k.kick(key)
			}
		}
	}
}

// apply brings one grant's backend in line with its state.
func (k *Keyguard) apply(ctx context.Context, key string) error {
	cur, err := k.grants.Get(ctx, key)
	if err != nil {
		if errors.Is(err, grants.ErrNotFound) {
			return nil
		}
		return err
	}
	if cur.Applied {
		return nil
	}
	b, ok := k.backends[cur.Backend]
	if !ok {
		return fmt.Errorf("keyguard: grant %s names backend %q, which is not configured here", key, cur.Backend)
	}
	state := cur.State
	start := time.Now()
	data, opErr := b.apply(ctx, cur.Grant)
	k.metrics.backendCalls.Record(ctx, time.Since(start).Seconds(), metric.WithAttributes(
		attribute.String("backend", cur.Backend), attribute.String("state", string(state)), attribute.Bool("ok", opErr == nil)))
	var done grants.Entry
	var applied, stale, recovered bool
	e, _, err := k.grants.Update(ctx, key, func(g *grants.Grant) (bool, error) {
		applied, stale, recovered = false, false, false
		if data != nil {
			g.BackendData = data
		}
		if g.State != state {
			// The grant changed while the call for its old state ran.
			// Another keyguard may have applied the new state before this
			// call landed (or the call failed halfway), so the new state is
			// applied (again) next.
			stale = true
			g.Applied = false
			return true, nil
		}
		if opErr != nil {
			g.ApplyError = clipReason(opErr.Error())
			g.ApplyAttempts++
			return true, nil
		}
		if g.Applied {
			return data != nil, nil
		}
		// Failed attempts before this one raised an alert: resolve it.
		recovered = g.ApplyAttempts > 0
		g.Applied, g.ApplyError, g.ApplyAttempts = true, "", 0
		g.AppliedAt = time.Now().UTC()
		applied = true
		return true, nil
	})
	if err != nil {
		return err
	}
	done = e
	switch {
	case stale:
		k.log.InfoContext(ctx, "grant changed during a backend call; applying its new state", "grant", key, "was", state, "now", done.State, "call_err", opErr)
		k.kick(key)
		return nil
	case opErr != nil:
		k.alertApplyFailed(ctx, done.Grant, opErr)
		return opErr
	case !applied:
		if !done.Applied {
			k.kick(key)
		}
		return nil
	}
	k.log.InfoContext(ctx, "backend applied", "grant", key, "state", done.State, "backend", done.Backend)
	if err := k.publishKey(ctx, done.Grant, keyActionOf(done.Grant), done.CauseTime); err != nil {
		return err
	}
	if recovered {
		k.alertApplied(ctx, done.Grant)
	}
	return nil
}

// applyAlertKey is the alert key (events.AlertKey) of a grant's backend
// change: key.revocation_not_applied and key.restore_failed fire it, the
// change's application resolves it.
func applyAlertKey(g grants.Grant) string {
	return events.AlertKey(g.VMKey, "key.apply."+g.Backend+"."+g.KeyName)
}

// alertApplied resolves the alert of a backend change that failed before
// it was applied.
func (k *Keyguard) alertApplied(ctx context.Context, g grants.Grant) {
	what := "restore"
	if g.State == grants.Revoked {
		what = "revocation"
	}
	a := events.Alert{
		Severity:   events.SeverityInfo,
		Code:       "key.applied",
		VMKey:      g.VMKey,
		ResourceID: g.ResourceID,
		Message:    fmt.Sprintf("the %s of %s on backend %s for VM %s is in force", what, g.KeyName, g.Backend, g.VMKey),
		CauseID:    g.CauseID,
		Source:     k.cfg.Source,
		At:         time.Now().UTC(),
		Key:        applyAlertKey(g),
		State:      events.AlertResolved,
	}
	if err := k.conn.PublishAlert(ctx, k.cfg.Source, eventID("alert", "applied", g.Key(), g.CauseID, string(g.State)), a); err != nil {
		k.log.ErrorContext(ctx, "publish alert", "code", a.Code, "err", err)
	}
}

// alertApplyFailed raises an alert while a backend does not take a change:
// critical for a revocation not in force, high for a restore. The id
// repeats per grant and cause, so the alert stream's duplicate window (2
// min) turns repeated failures into a reminder every few minutes.
func (k *Keyguard) alertApplyFailed(ctx context.Context, g grants.Grant, cause error) {
	sev, code, what := events.SeverityHigh, "key.restore_failed", "restore"
	if g.State == grants.Revoked {
		sev, code, what = events.SeverityCritical, "key.revocation_not_applied", "revocation"
	}
	a := events.Alert{
		Severity:   sev,
		Code:       code,
		VMKey:      g.VMKey,
		ResourceID: g.ResourceID,
		Message: fmt.Sprintf("the %s of %s on backend %s for VM %s is not in force yet (attempt %d): %v",
			what, g.KeyName, g.Backend, g.VMKey, g.ApplyAttempts, cause),
		CauseID: g.CauseID,
		Source:  k.cfg.Source,
		At:      time.Now().UTC(),
		Key:     applyAlertKey(g),
		State:   events.AlertFiring,
	}
	if err := k.conn.PublishAlert(ctx, k.cfg.Source, eventID("alert", code, g.Key(), g.CauseID), a); err != nil {
		k.log.ErrorContext(ctx, "publish alert", "code", code, "err", err)
	}
}

// reconcile compares every grant with the VM's attestation status, revokes
// or suspends where events were missed, and retries pending backend work.
func (k *Keyguard) reconcile(ctx context.Context) error {
	if err := k.pushRevocations(ctx); err != nil {
		k.log.ErrorContext(ctx, "push revocations", "err", err)
	}
	entries, err := k.grants.List(ctx, "")
	if err != nil {
		return err
	}
	statuses := map[string]*events.VMStatus{}
	for _, e := range entries {
		st, seen := statuses[e.VMKey]
		if !seen {
			st, err = k.status(ctx, e.VMKey)
			if err != nil && !bus.IsKeyMissing(err) {
				return err
			}
			statuses[e.VMKey] = st
		}
		if st != nil {
			var c cause
			switch {
			case st.Status.Revokes() && e.State != grants.Revoked:
				c = cause{trigger: triggerRevoke, status: string(st.Status)}
			case st.Status == events.StatusSuspended && e.State == grants.Active:
				c = cause{trigger: triggerSuspend, status: string(st.Status)}
			}
			if c.trigger != triggerNone {
				c.vm, c.resourceID = e.VMKey, st.ResourceID
				c.id = eventID("reconcile", e.VMKey, string(st.Status), st.Since.Format(time.RFC3339Nano))
				c.at, c.actor = st.Since, "keyguard"
				c.reason = fmt.Sprintf("status %s since %s (reconciliation)%s", st.Status, st.Since.Format(time.RFC3339), reasonCodes(st.Reasons))
				k.log.WarnContext(ctx, "grant out of line with status; acting", "vm", e.VMKey, "status", st.Status, "grant", e.Key())
				if err := k.act(ctx, c); err != nil {
					return err
				}
				continue
			}
		}
		switch {
		case !e.Applied:
			k.kick(e.Key())
		case time.Since(later(e.ChangedAt, e.AppliedAt)) < recentChange && e.CauseID != "":
			// Publish again what recently took effect, in case the process
			// that made the change died before publishing: the stable event
			// id makes the stream store it once.
			if err := k.publishKey(ctx, e.Grant, keyActionOf(e.Grant), e.CauseTime); err != nil {
				return err
			}
		}
	}
	return nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// recentChange bounds how long after a change reconciliation republishes its
// key event; it is well within VIGIL_EVENTS' duplicate window (10 min).
const recentChange = 5 * time.Minute

func (k *Keyguard) reconcileLoop(ctx context.Context) {
	t := time.NewTicker(k.cfg.ReconcileInterval)
	defer t.Stop()
	for {
		if err := k.reconcile(ctx); err != nil && ctx.Err() == nil {
			k.log.WarnContext(ctx, "reconciliation failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// status reads a VM's attestation status from the stream leader; nil and a
// not-found error when the VM has none.
func (k *Keyguard) status(ctx context.Context, vm string) (*events.VMStatus, error) {
	e, err := kvlast.Get(ctx, k.conn.NC, events.BucketStatus, vm)
	if err != nil {
		return nil, err
	}
	var st events.VMStatus
	if err := json.Unmarshal(e.Value, &st); err != nil {
		return nil, fmt.Errorf("keyguard: status of %s is unreadable: %w", vm, err)
	}
	return &st, nil
}
