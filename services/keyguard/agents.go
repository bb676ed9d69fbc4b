package keyguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// agentStore keeps, in vigil-agents, the agent credentials keyguard issued
// (key id.<vm>) and revoked (key rev.<vm>), so that a VM's credentials can
// be revoked and the account's revocation list rebuilt by any replica.
type agentStore struct {
	nc *nats.Conn
	kv jetstream.KeyValue
}

// agentRecord is id.<vm>: the public keys the VM's agent enrolled with
// whose JWTs have not expired.
type agentRecord struct {
	VMKey string     `json:"vm_key"`
	VMID  string     `json:"vm_id,omitempty"`
	Keys  []agentKey `json:"keys"`
}

// agentKey is one enrolled public nkey and its latest JWT's life.
type agentKey struct {
	PublicKey string    `json:"public_key"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// revocationRecord is rev.<vm>: the VM's revoked keys, each in the
// account's revocation list until the last JWT issued before its
// revocation has expired, and whether the VM may enroll again.
type revocationRecord struct {
	VMKey string       `json:"vm_key"`
	Keys  []revokedKey `json:"keys"`
	Cause string       `json:"cause"`
	// Blocked refuses enrollment until an operator restores the VM.
	Blocked bool      `json:"blocked"`
	At      time.Time `json:"at"`
}

// revokedKey is a key whose JWTs issued at or before At are revoked; Until
// is when the last of them expires.
type revokedKey struct {
	PublicKey string    `json:"public_key"`
	At        time.Time `json:"at"`
	Until     time.Time `json:"until"`
}

func idKey(vm string) string  { return "id." + vm }
func revKey(vm string) string { return "rev." + vm }

// maxAgentKeys bounds the keys kept per VM: an agent that enrolls with a
// new key on every start leaves at most this many live JWTs. The oldest
// beyond them are revoked at once (issued), never just forgotten.
const maxAgentKeys = 16

// update reads key, applies fn and writes the result with a revision
// check, retrying on a conflict; fn returning nil deletes the key.
func update[T any](ctx context.Context, kv jetstream.KeyValue, key string, fn func(cur *T) *T) error {
	for attempt := 0; ; attempt++ {
		var cur *T
		var rev uint64
		e, err := kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			cur, rev = new(T), e.Revision()
			if err := json.Unmarshal(e.Value(), cur); err != nil {
				return fmt.Errorf("%s: %w", key, err)
			}
		}
		next := fn(cur)
		switch {
		case next == nil && cur == nil:
			return nil
		case next == nil:
			err = kv.Delete(ctx, key, jetstream.LastRevision(rev))
		default:
			b, merr := json.Marshal(next)
			if merr != nil {
				return merr
			}
			if cur == nil {
				_, err = kv.Create(ctx, key, b)
			} else {
				_, err = kv.Update(ctx, key, b, rev)
			}
		}
		if err == nil || attempt >= 16 || !bus.IsRevisionConflict(err) {
			return err
		}
	}
}

// issued records that vm's agent holds a JWT for pub from at until
// expires. Keys beyond the newest maxAgentKeys are revoked (not blocking
// the VM), and it reports whether any was, for the caller to push the
// revocation list.
func (s *agentStore) issued(ctx context.Context, vm, vmID, pub string, at, expires time.Time) (bool, error) {
	var dropped []agentKey
	err := update(ctx, s.kv, idKey(vm), func(r *agentRecord) *agentRecord {
		dropped = nil
		if r == nil {
			r = &agentRecord{VMKey: vm}
		}
		r.VMID = vmID
		r.Keys = slices.DeleteFunc(r.Keys, func(k agentKey) bool { return k.PublicKey == pub || !k.ExpiresAt.After(at) })
		r.Keys = append(r.Keys, agentKey{PublicKey: pub, IssuedAt: at.UTC(), ExpiresAt: expires.UTC()})
		if n := len(r.Keys) - maxAgentKeys; n > 0 {
			dropped = slices.Clone(r.Keys[:n])
			r.Keys = r.Keys[n:]
		}
		return r
	})
	if err != nil || len(dropped) == 0 {
		return false, err
	}
	return true, s.revokeKeys(ctx, vm, "superseded", false, dropped, at)
}

// revokeKeys adds keys to vm's revocation record at at (blocking the VM's
// enrollment when blocked; a block is lifted only by unblock).
func (s *agentStore) revokeKeys(ctx context.Context, vm, cause string, blocked bool, keys []agentKey, at time.Time) error {
	return update(ctx, s.kv, revKey(vm), func(r *revocationRecord) *revocationRecord {
		if r == nil {
			r = &revocationRecord{VMKey: vm}
		}
		if blocked {
			r.Cause, r.At, r.Blocked = cause, at.UTC(), true
		}
		for _, k := range keys {
			r.Keys = slices.DeleteFunc(r.Keys, func(o revokedKey) bool { return o.PublicKey == k.PublicKey })
			r.Keys = append(r.Keys, revokedKey{PublicKey: k.PublicKey, At: at.UTC(), Until: k.ExpiresAt})
		}
		return r
	})
}

// revoke moves vm's live keys to its revocation record at at, blocked
// unless the cause lets the VM enroll again by itself, and returns whether
// any key was revoked. The keys are in the revocation record before they
// leave the VM's record, and a key issued meanwhile is revoked too.
func (s *agentStore) revoke(ctx context.Context, vm, cause string, blocked bool, at time.Time) (bool, error) {
	for attempt := 0; ; attempt++ {
		e, err := s.kv.Get(ctx, idKey(vm))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// Nothing issued (or all moved already): the block still holds.
			return false, s.revokeKeys(ctx, vm, cause, blocked, nil, at)
		}
		if err != nil {
			return false, err
		}
		var r agentRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return false, fmt.Errorf("%s: %w", idKey(vm), err)
		}
		live := slices.DeleteFunc(r.Keys, func(k agentKey) bool { return !k.ExpiresAt.After(at) })
		if err := s.revokeKeys(ctx, vm, cause, blocked, live, at); err != nil {
			return false, err
		}
		// The replica (or the delivery) that removes the record reports the
		// revocation; one racing with it finds the record gone.
		err = s.kv.Delete(ctx, idKey(vm), jetstream.LastRevision(e.Revision()))
		if err == nil {
			return len(live) > 0, nil
		}
		if attempt >= 16 || !bus.IsRevisionConflict(err) {
			return false, err
		}
	}
}

// unblock lets vm enroll again (an operator restored it).
func (s *agentStore) unblock(ctx context.Context, vm string) (bool, error) {
	was := false
	err := update(ctx, s.kv, revKey(vm), func(r *revocationRecord) *revocationRecord {
		if r == nil {
			return nil
		}
		was, r.Blocked = r.Blocked, false
		return r
	})
	return was, err
}

// blocked reports whether vm's enrollment is blocked by a revocation.
func (s *agentStore) blocked(ctx context.Context, vm string) (*revocationRecord, error) {
	// From the stream leader: a revocation stored by another replica is
	// seen at once.
	e, err := kvlast.Get(ctx, s.nc, events.BucketAgents, revKey(vm))
	switch {
	case bus.IsKeyMissing(err):
		return nil, nil
	case err != nil:
		return nil, err
	}
	var r revocationRecord
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", revKey(vm), err)
	}
	if !r.Blocked {
		return nil, nil
	}
	return &r, nil
}

// revocations returns every key whose revoked JWTs may still be alive at
// now, with its revocation time: the account's revocation list. Records
// whose keys have all expired and that block nothing are pruned.
func (s *agentStore) revocations(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	lister, err := s.kv.ListKeysFiltered(ctx, "rev.*")
	if err != nil {
		return nil, err
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	out := map[string]time.Time{}
	for _, key := range keys {
		e, err := s.kv.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var r revocationRecord
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		live := slices.DeleteFunc(slices.Clone(r.Keys), func(k revokedKey) bool { return !k.Until.After(now) })
		for _, k := range live {
			if t, ok := out[k.PublicKey]; !ok || k.At.After(t) {
				out[k.PublicKey] = k.At
			}
		}
		if len(live) < len(r.Keys) {
			// Prune what the account need not carry any more.
			vm := r.VMKey
			if err := update(ctx, s.kv, key, func(c *revocationRecord) *revocationRecord {
				if c == nil {
					return nil
				}
				c.Keys = slices.DeleteFunc(c.Keys, func(k revokedKey) bool { return !k.Until.After(now) })
				if len(c.Keys) == 0 && !c.Blocked {
					return nil
				}
				return c
			}); err != nil {
				return nil, fmt.Errorf("prune revocations of %s: %w", vm, err)
			}
		}
	}
	return out, nil
}

// openAgents opens vigil-agents.
func openAgents(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) (*agentStore, error) {
	kv, err := js.KeyValue(ctx, events.BucketAgents)
	if err != nil {
		return nil, fmt.Errorf("keyguard: bucket %s: %w", events.BucketAgents, err)
	}
	return &agentStore{nc: nc, kv: kv}, nil
}

// agentRevokes reports whether a revocation for cause also revokes the
// VM's agent credentials: an untrusted verdict, retirement and an
// operator's revocation do; staleness does not (an agent that was away
// comes back by itself).
func agentRevokes(cause string) bool {
	return cause == grants.CauseUntrusted || cause == grants.CauseRetired || cause == grants.CauseOperator
}

// revokeAgent revokes vm's agent credentials for cause: the keys move to
// its revocation record (blocking enrollment unless the restore policy
// lets the VM come back by itself), the key event is published, and the
// account's revocation list is pushed to the servers, which close the
// agent's connections. Done again, it pushes again. A VM that never
// enrolled is blocked all the same: it enrolls after an operator's
// restore only.
func (k *Keyguard) revokeAgent(ctx context.Context, c cause) error {
	if k.cfg.Enroll.Issuer == nil || !agentRevokes(c.status) {
		return nil // no enrollment, no credentials of keyguard's to revoke
	}
	blocked := !k.cfg.Restore.Allows(c.status)
	revoked, err := k.agents.revoke(ctx, c.vm, c.status, blocked, time.Now())
	if err != nil {
		return fmt.Errorf("keyguard: revoke the agent credentials of %s: %w", c.vm, err)
	}
	if revoked {
		key := events.Key{VMKey: c.vm, Action: events.KeyRevoked, Backend: BackendNATS, Reason: c.reason, Actor: c.actor,
			CauseID: c.id, At: time.Now().UTC(), LatencyMS: float64(time.Since(c.at).Microseconds()) / 1000}
		subject := events.KeySubject(c.vm)
		env, err := events.New(events.TypeKey, k.cfg.Source, subject, key)
		if err == nil {
			env.ID = eventID("revoked", c.vm, BackendNATS, c.id)
			_, err = k.conn.Publish(ctx, subject, env)
		}
		if err != nil {
			return fmt.Errorf("keyguard: publish the revocation of %s's agent credentials: %w", c.vm, err)
		}
		k.log.WarnContext(ctx, "agent credentials revoked", "vm", c.vm, "cause", c.status, "blocked", blocked)
	}
	return k.pushRevocations(ctx)
}

// pushRevocations sends the account, with every revocation in force, to
// the servers. Without a revoker (no bus identity) there is nothing to
// push.
//
// Pushes go one at a time, each with the list read after the one before
// it returned, so that the servers never get an older list after a newer
// one; a caller returns once a push that read the list after its call
// began has succeeded, so that the revocations that come together (a bad
// rollout) share one push (see pushGate). A push that shared its second
// with the one before it is followed by another in a later second
// (settleRevocations).
func (k *Keyguard) pushRevocations(ctx context.Context) error {
	if k.revoker == nil {
		return nil
	}
	return k.pushes.do(ctx, func(ctx context.Context) error {
		set, err := k.agents.revocations(ctx, time.Now())
		if err != nil {
			return fmt.Errorf("keyguard: revocation list: %w", err)
		}
		again, err := k.cfg.Enroll.Revoker.Push(ctx, k.revoker.NC, set)
		if err != nil {
			return fmt.Errorf("keyguard: push %d revocations: %w", len(set), err)
		}
		k.metrics.revocationsPushed.Add(ctx, 1)
		if !again.IsZero() {
			select {
			case k.settle <- again:
			default: // a settling push is due already; one that shares its second asks again
			}
		}
		return nil
	})
}

// settleRevocations pushes the list again when a push shared its second
// with the one before it (busauth.Revoker.Push): only a push signed in a
// later second is sure to be the list every server keeps.
func (k *Keyguard) settleRevocations(ctx context.Context) error {
	for {
		var at time.Time
		select {
		case <-ctx.Done():
			return nil
		case at = <-k.settle:
		}
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if err := k.pushRevocations(ctx); err != nil {
			k.log.ErrorContext(ctx, "push revocations again, in a second of their own", "err", err)
		}
	}
}

// pushGate runs one push at a time and lets one successful push stand
// for every call that began before it read its state: a call returns nil
// without pushing when a push that started after the call began has
// succeeded in the meantime. Calls are counted when they begin, after
// the caller's own write, so a push that reads its state after counting
// covers every call it counted.
type pushGate struct {
	turn    chan struct{} // a token: held for one push
	calls   atomic.Uint64 // calls begun
	covered uint64        // calls covered by the last successful push (with turn held)
}

func newPushGate() *pushGate { return &pushGate{turn: make(chan struct{}, 1)} }

func (g *pushGate) do(ctx context.Context, push func(context.Context) error) error {
	call := g.calls.Add(1)
	select {
	case g.turn <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-g.turn }()
	if g.covered >= call {
		return nil
	}
	counted := g.calls.Load()
	if err := push(ctx); err != nil {
		return err
	}
	g.covered = counted
	return nil
}

// connectRevoker connects as the revoker's system-account user.
func connectRevoker(ctx context.Context, cfg Config, r *busauth.Revoker, log *slog.Logger) (*bus.Conn, error) {
	nc := cfg.Enroll.RevokerNATS
	if nc.URL == "" {
		nc.URL = cfg.NATS.URL
	}
	if nc.CredsFile == "" && nc.UserJWT == "" {
		c := r.Creds()
		nc.UserJWT, nc.NKeySeed, nc.InboxPrefix = c.JWT, c.Seed, c.InboxPrefix
	}
	if nc.Name == "" {
		nc.Name = "keyguard revoker"
	}
	if nc.Logger == nil {
		nc.Logger = log.With("component", "revoker")
	}
	conn, err := bus.Connect(ctx, nc)
	if err != nil {
		return nil, fmt.Errorf("keyguard: connect the revoker: %w", err)
	}
	return conn, nil
}
