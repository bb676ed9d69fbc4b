package keyguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// Operator API actions. An operator named NAME requests action on
// vigil.keyguard.admin.<action>.NAME (busauth.AdminRequestSubject), which
// in operator mode the server lets only the administrator NAME publish on;
// keyguard serves vigil.keyguard.admin.<action>.* and records the
// subject's NAME as the actor, refusing a payload that names another.
const (
	ActionRestore = "restore"
	ActionRevoke  = "revoke"
	ActionGrant   = "grant"
)

// Operator API subject prefixes: vigil.keyguard.admin.<action>; a request
// adds the actor token (AdminSubject).
const (
	SubjectAdminRestore = subjectAdminPrefix + ActionRestore
	SubjectAdminRevoke  = subjectAdminPrefix + ActionRevoke
	SubjectAdminGrant   = subjectAdminPrefix + ActionGrant
)

// AdminSubject is where actor requests action:
// vigil.keyguard.admin.<action>.<actor> (busauth.AdminRequestSubject).
func AdminSubject(action, actor string) string { return busauth.AdminRequestSubject(action, actor) }

// subjectActor returns the actor token of the operator request being
// served (vigil.keyguard.admin.<action>.<actor>), and refuses a payload
// actor other than it: the actor recorded is the one the server let
// publish there, never the payload's.
func subjectActor(ctx context.Context, payloadActor string) (string, error) {
	subject := bus.RequestSubject(ctx)
	rest, ok := strings.CutPrefix(subject, subjectAdminPrefix)
	_, actor, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || actor == "" || strings.Contains(actor, ".") || len(actor) > maxActor {
		return "", refuse(keyrelease.CodeBadRequest, "operator requests name their actor in the subject (vigil.keyguard.admin.<action>.<actor>), not %q", subject)
	}
	if payloadActor != "" && payloadActor != actor {
		return "", refuse(keyrelease.CodeBadRequest, "the request names actor %q but was sent by %q", payloadActor, actor)
	}
	return actor, nil
}

// pinnedVM refuses (wrong_vm) a nonce or release request on
// vigil.keyguard.{nonce,release}.<vm> for another VM than vm (and one on
// any other subject, which keyguard does not serve).
func pinnedVM(ctx context.Context, vm string) error {
	subject := bus.RequestSubject(ctx)
	parts := strings.Split(subject, ".")
	if len(parts) != 4 {
		return refuse(keyrelease.CodeWrongVM, "request for VM %s on %q, not on the subject of a VM", vm, subject)
	}
	if parts[3] != vm {
		return refuse(keyrelease.CodeWrongVM, "request for VM %s on the subject of VM %s", vm, parts[3])
	}
	return nil
}

// Refusal codes of the operator API (besides keyrelease.CodeBadRequest,
// CodeNotTrusted and CodeUnavailable).
const (
	CodeNoGrants       = "no_grants"
	CodeGrantExists    = "grant_exists"
	CodeUnknownBackend = "unknown_backend"
)

// ChangeRequest asks keyguard to restore or revoke grants of a VM.
type ChangeRequest struct {
	// VM is the VM key or the ARM resource ID.
	VM string `json:"vm"`
	// Keys limits the change to these key names (all of the VM's grants
	// when empty).
	Keys []string `json:"keys,omitempty"`
	// Reason is why (required; recorded in the key event and audit log).
	Reason string `json:"reason"`
	// Actor is who asks (required).
	Actor string `json:"actor"`
}

// GrantRequest asks keyguard to let a VM obtain a key.
type GrantRequest struct {
	VM      string `json:"vm"`
	VMID    string `json:"vm_id,omitempty"`
	Key     string `json:"key"`
	Backend string `json:"backend,omitempty"` // default "local"
	Reason  string `json:"reason,omitempty"`
	Actor   string `json:"actor"`
}

// ChangeResponse lists the grants changed and those left as they were.
type ChangeResponse struct {
	VMKey     string         `json:"vm_key"`
	Changed   []grants.Grant `json:"changed"`
	Unchanged []grants.Grant `json:"unchanged,omitempty"`
	Notes     []string       `json:"notes,omitempty"`
}

const (
	maxReason = 512
	maxActor  = 128
)

func (r ChangeRequest) validate() (string, error) {
	vm, err := resolveVM(r.VM)
	if err != nil {
		return "", err
	}
	switch {
	case r.Reason == "" || len(r.Reason) > maxReason:
		return "", fmt.Errorf("a reason of 1 to %d characters is required", maxReason)
	case r.Actor == "" || len(r.Actor) > maxActor:
		return "", fmt.Errorf("an actor of 1 to %d characters is required", maxActor)
	case len(r.Keys) > 1000:
		return "", fmt.Errorf("%d keys named, at most 1000", len(r.Keys))
	}
	for _, k := range r.Keys {
		if !keyrelease.ValidKeyName(k) {
			return "", fmt.Errorf("key name %q is not valid", k)
		}
	}
	return vm, nil
}

func wanted(keys []string, name string) bool {
	if len(keys) == 0 {
		return true
	}
	for _, k := range keys {
		if k == name {
			return true
		}
	}
	return false
}

func decodeAdmin(data []byte, v any) error {
	if len(data) > 64<<10 {
		return refuse(keyrelease.CodeBadRequest, "request is %d bytes, at most %d", len(data), 64<<10)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	return nil
}

// decodeChange decodes and validates a restore or revoke request and
// returns it with the VM key it names.
func decodeChange(ctx context.Context, data []byte) (ChangeRequest, string, error) {
	var req ChangeRequest
	if err := decodeAdmin(data, &req); err != nil {
		return req, "", err
	}
	actor, err := subjectActor(ctx, req.Actor)
	if err != nil {
		return req, "", err
	}
	req.Actor = actor
	vm, err := req.validate()
	if err != nil {
		return req, "", refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	return req, vm, nil
}

// handleRestore serves vigil.keyguard.admin.restore.<actor>: revoked (or suspended)
// grants of a VM whose status is trusted or warning become active again.
func (k *Keyguard) handleRestore(ctx context.Context, data []byte) ([]byte, error) {
	req, vm, err := decodeChange(ctx, data)
	if err != nil {
		return nil, err
	}
	// A VM whose agent lost its credentials is never attested trusted
	// again by itself: the operator's restore lets it enroll (with fresh
	// evidence under policy); its grants follow once it is trusted.
	unblocked, err := k.agents.unblock(ctx, vm)
	if err != nil {
		return nil, refuse(keyrelease.CodeUnavailable, "read revocations: %v", err)
	}
	st, err := k.status(ctx, vm)
	switch {
	case err != nil && !bus.IsKeyMissing(err):
		return nil, refuse(keyrelease.CodeUnavailable, "read status: %v", err)
	case (err != nil || !st.Status.Releasable()) && unblocked:
		k.log.InfoContext(ctx, "agent may enroll again", "vm", vm, "actor", req.Actor, "reason", req.Reason)
		return json.Marshal(ChangeResponse{VMKey: vm, Notes: []string{
			"the VM's agent may enroll again; its grants are restored once it is attested trusted or warning (restore again then)"}})
	case err != nil:
		return nil, refuse(keyrelease.CodeNotTrusted, "VM %s has no attestation status; restore needs it trusted or warning", vm)
	case !st.Status.Releasable():
		return nil, refuse(keyrelease.CodeNotTrusted, "VM %s is %s; restore needs it trusted or warning", vm, st.Status)
	}
	c := cause{vm: vm, resourceID: st.ResourceID, id: events.NewID(), at: time.Now().UTC(),
		actor: req.Actor, reason: clipReason(req.Reason)}
	out, err := k.change(ctx, c, req.Keys, func(g *grants.Grant) bool {
		if g.State == grants.Active {
			return false
		}
		g.State, g.RevokedFor, g.Action = grants.Active, "", events.KeyRestored
		return true
	})
	if err == nil {
		k.resolveRestoreRequired(ctx, c)
	}
	return out, err
}

// handleRevoke serves vigil.keyguard.admin.revoke.<actor>: an operator revokes
// grants of a VM.
func (k *Keyguard) handleRevoke(ctx context.Context, data []byte) ([]byte, error) {
	req, vm, err := decodeChange(ctx, data)
	if err != nil {
		return nil, err
	}
	c := cause{trigger: triggerRevoke, vm: vm, id: events.NewID(), at: time.Now().UTC(),
		actor: req.Actor, reason: clipReason(req.Reason), status: grants.CauseOperator}
	out, err := k.change(ctx, c, req.Keys, func(g *grants.Grant) bool {
		if g.State == grants.Revoked {
			g.RevokedFor = grants.CauseOperator // only an operator undoes it now
			return false
		}
		g.State, g.RevokedFor, g.Action = grants.Revoked, grants.CauseOperator, events.KeyRevoked
		return true
	})
	return out, err
}

// change applies an operator's change to the grants of c.vm named in keys.
func (k *Keyguard) change(ctx context.Context, c cause, keys []string, fn func(*grants.Grant) bool) ([]byte, error) {
	entries, err := k.grants.List(ctx, c.vm)
	if err != nil {
		return nil, refuse(keyrelease.CodeUnavailable, "list grants: %v", err)
	}
	resp := ChangeResponse{VMKey: c.vm, Changed: []grants.Grant{}}
	var revoked []grants.Grant
	for _, e := range entries {
		if !wanted(keys, e.KeyName) {
			continue
		}
		changed := false
		done, _, err := k.grants.Update(ctx, e.Key(), func(g *grants.Grant) (bool, error) {
			before := g.RevokedFor
			changed = fn(g)
			if !changed {
				return g.RevokedFor != before, nil
			}
			now := time.Now().UTC()
			g.Reason, g.Actor, g.CauseID, g.CauseTime, g.ChangedAt = c.reason, c.actor, c.id, c.at, now
			g.Applied = g.Backend == BackendLocal || g.State == grants.Suspended
			g.ApplyError, g.ApplyAttempts = "", 0
			if g.Applied {
				g.AppliedAt = now
			}
			return true, nil
		})
		if err != nil {
			return nil, refuse(keyrelease.CodeUnavailable, "update %s: %v", e.Key(), err)
		}
		if !changed {
			resp.Unchanged = append(resp.Unchanged, done.Grant)
			continue
		}
		resp.Changed = append(resp.Changed, done.Grant)
		k.log.InfoContext(ctx, "operator changed grant", "grant", done.Key(), "state", done.State, "actor", c.actor, "reason", c.reason)
		if done.State == grants.Revoked {
			revoked = append(revoked, done.Grant)
		}
		if done.Applied {
			if err := k.publishKey(ctx, done.Grant, keyActionOf(done.Grant), time.Time{}); err != nil {
				return nil, refuse(keyrelease.CodeUnavailable, "%v", err)
			}
		} else {
			k.kick(done.Key())
			resp.Notes = append(resp.Notes, fmt.Sprintf("%s on %s: applying to the backend", done.KeyName, done.Backend))
		}
	}
	if len(resp.Changed) == 0 && len(resp.Unchanged) == 0 {
		return nil, refuse(CodeNoGrants, "VM %s has no grants%s", c.vm, keyList(keys))
	}
	if len(revoked) > 0 {
		if err := k.alertRevoked(ctx, c, revoked); err != nil {
			return nil, refuse(keyrelease.CodeUnavailable, "%v", err)
		}
	}
	return json.Marshal(resp)
}

func keyList(keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	return fmt.Sprintf(" for keys %v", keys)
}

// handleGrant serves vigil.keyguard.admin.grant.<actor>.
func (k *Keyguard) handleGrant(ctx context.Context, data []byte) ([]byte, error) {
	var req GrantRequest
	if err := decodeAdmin(data, &req); err != nil {
		return nil, err
	}
	actor, err := subjectActor(ctx, req.Actor)
	if err != nil {
		return nil, err
	}
	req.Actor = actor
	vm, err := resolveVM(req.VM)
	if err != nil {
		return nil, refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	if req.Backend == "" {
		req.Backend = BackendLocal
	}
	switch {
	case !keyrelease.ValidKeyName(req.Key):
		return nil, refuse(keyrelease.CodeBadRequest, "key name %q is not valid", req.Key)
	case req.Actor == "" || len(req.Actor) > maxActor || len(req.Reason) > maxReason || len(req.VMID) > 64:
		return nil, refuse(keyrelease.CodeBadRequest, "an actor of 1 to %d characters is required; reason at most %d; vm_id at most 64", maxActor, maxReason)
	}
	if _, ok := k.backends[req.Backend]; !ok {
		return nil, refuse(CodeUnknownBackend, "backend %q is not configured", req.Backend)
	}
	resourceID := ""
	if req.VM != vm {
		resourceID = req.VM
	}
	e, created, err := k.createGrant(ctx, vm, resourceID, req.VMID, req.Key, req.Backend, req.Actor, req.Reason)
	if err != nil {
		if errors.Is(err, grants.ErrExists) {
			return nil, refuse(CodeGrantExists, "VM %s already has a grant for %s on %s (state %s)", vm, req.Key, req.Backend, e.State)
		}
		return nil, refuse(keyrelease.CodeUnavailable, "%v", err)
	}
	resp := ChangeResponse{VMKey: vm, Changed: []grants.Grant{e.Grant}}
	if !created {
		resp = ChangeResponse{VMKey: vm, Changed: []grants.Grant{}, Unchanged: []grants.Grant{e.Grant}}
	}
	if req.Backend == BackendLocal {
		if _, _, err := k.secrets.Get(ctx, req.Key); errors.Is(err, secrets.ErrNotFound) {
			resp.Notes = append(resp.Notes, fmt.Sprintf("no secret named %s is stored yet: put one with `vigil keyguard secret put %s`", req.Key, req.Key))
		}
	}
	return json.Marshal(resp)
}

// createGrant creates a grant whose initial state follows the VM's current
// status: a VM that is untrusted, stale or retired gets a revoked grant, a
// suspended VM a suspended one. It publishes the key event.
func (k *Keyguard) createGrant(ctx context.Context, vm, resourceID, vmID, keyName, backend, actor, reason string) (grants.Entry, bool, error) {
	now := time.Now().UTC()
	g := grants.Grant{VMKey: vm, VMID: vmID, ResourceID: resourceID, KeyName: keyName, Backend: backend,
		State: grants.Active, Action: events.KeyGranted, Applied: true, Actor: actor, Reason: reason, GrantedAt: now, ChangedAt: now, AppliedAt: now}
	st, err := k.status(ctx, vm)
	if err != nil && !bus.IsKeyMissing(err) {
		return grants.Entry{}, false, err
	}
	if st != nil {
		if g.ResourceID == "" {
			g.ResourceID = st.ResourceID
		}
		switch {
		case st.Status.Revokes():
			g.State, g.RevokedFor, g.Action = grants.Revoked, string(st.Status), events.KeyRevoked
			g.Reason = fmt.Sprintf("granted while VM is %s", st.Status)
			g.Applied = backend == BackendLocal
		case st.Status == events.StatusSuspended:
			g.State, g.Action = grants.Suspended, events.KeySuspended
		}
	}
	g.CauseID = events.NewID()
	e, err := k.grants.Create(ctx, g)
	if errors.Is(err, grants.ErrExists) {
		cur, gerr := k.grants.Get(ctx, g.Key())
		if gerr != nil {
			return grants.Entry{}, false, gerr
		}
		return cur, false, err
	}
	if err != nil {
		return grants.Entry{}, false, err
	}
	action := keyActionOf(e.Grant)
	k.log.InfoContext(ctx, "grant created", "grant", e.Key(), "state", e.State, "actor", actor)
	if e.Applied {
		if err := k.publishKey(ctx, e.Grant, action, time.Time{}); err != nil {
			return e, true, err
		}
	} else {
		k.kick(e.Key())
	}
	return e, true, nil
}

// Client helpers for the operator API (used by `vigil keyguard`).

// Restore asks keyguard to restore grants of a VM, on the subject of
// req.Actor (in operator mode the administrator's name).
func Restore(ctx context.Context, conn *bus.Conn, req ChangeRequest) (ChangeResponse, error) {
	return adminRequest(ctx, conn, ActionRestore, req.Actor, req)
}

// Revoke asks keyguard to revoke grants of a VM, on the subject of
// req.Actor.
func Revoke(ctx context.Context, conn *bus.Conn, req ChangeRequest) (ChangeResponse, error) {
	return adminRequest(ctx, conn, ActionRevoke, req.Actor, req)
}

// Grant asks keyguard to create a grant, on the subject of req.Actor.
func Grant(ctx context.Context, conn *bus.Conn, req GrantRequest) (ChangeResponse, error) {
	return adminRequest(ctx, conn, ActionGrant, req.Actor, req)
}

func adminRequest(ctx context.Context, conn *bus.Conn, action, actor string, req any) (ChangeResponse, error) {
	var resp ChangeResponse
	if !events.ValidSubjectToken(actor) || len(actor) > maxActor {
		return resp, &bus.ReplyError{Code: keyrelease.CodeBadRequest, Message: fmt.Sprintf("actor %q is not a subject token of 1 to %d characters", actor, maxActor)}
	}
	err := conn.Request(ctx, AdminSubject(action, actor), req, &resp)
	return resp, err
}
