// Package grants is keyguard's record of which VM may obtain which key, on
// which backend, and whether that grant is active, suspended or revoked.
// Records live in the vigil-grants KV bucket under <vm>.<backend>.<key> and
// change only by compare-and-set, so any number of keyguard replicas can
// act on them at once.
package grants

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// State of a grant.
type State string

// Grant states.
const (
	// Active: the VM may obtain the key while its status is trusted or warning.
	Active State = "active"
	// Suspended: the VM is stopped or deallocated; no release until it is
	// trusted again, when the grant becomes active by itself.
	Suspended State = "suspended"
	// Revoked: the VM lost the key; only an operator (or the automatic
	// restore policy) makes the grant active again.
	Revoked State = "revoked"
)

// Causes of a revocation, in increasing order of gravity.
const (
	CauseStale     = string(events.StatusStale)
	CauseUntrusted = string(events.StatusUntrusted)
	CauseRetired   = string(events.StatusRetired)
	CauseOperator  = "operator"
)

// Graver returns the graver of two revocation causes.
func Graver(a, b string) string {
	rank := func(c string) int {
		switch c {
		case CauseStale:
			return 1
		case CauseUntrusted:
			return 2
		case CauseRetired:
			return 3
		case CauseOperator:
			return 4
		}
		return 0
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// Grant is one record of the vigil-grants bucket.
type Grant struct {
	VMKey string `json:"vm_key"`
	// VMID is the vmId an operator pinned the grant to (grant request,
	// configuration); empty: the vmId ARM reports when the key is used.
	// Nothing taken from an event or from evidence is ever written here.
	VMID       string `json:"vm_id,omitempty"`
	ResourceID string `json:"resource_id,omitempty"`
	KeyName    string `json:"key_name"`
	// Backend is "local" or the name of a configured Azure Key Vault backend.
	Backend string `json:"backend"`
	State   State  `json:"state"`
	// Action is the key action the last change amounted to: granted,
	// revoked, suspended or restored.
	Action events.KeyAction `json:"action,omitempty"`
	// RevokedFor is the gravest cause of the current revocation: stale,
	// untrusted, retired or operator.
	RevokedFor string `json:"revoked_for,omitempty"`
	// Reason, Actor and CauseID describe the last change.
	Reason  string `json:"reason,omitempty"`
	Actor   string `json:"actor,omitempty"`
	CauseID string `json:"cause_id,omitempty"`
	// CauseTime is the time of the event that caused the last change.
	CauseTime time.Time `json:"cause_time,omitzero"`
	// CauseSeq is the VIGIL_EVENTS stream sequence of the newest event
	// applied; older events never roll a grant back.
	CauseSeq uint64 `json:"cause_seq,omitempty"`
	// Applied reports that the backend reflects State; false while a
	// revocation or restore on a remote backend is pending.
	Applied bool `json:"applied"`
	// ApplyError is the last error from the backend, ApplyAttempts how many
	// times applying the current state failed.
	ApplyError    string `json:"apply_error,omitempty"`
	ApplyAttempts int    `json:"apply_attempts,omitempty"`
	// BackendData is the backend's own record of what it did (for example
	// which key versions it disabled), needed to undo it.
	BackendData json.RawMessage `json:"backend_data,omitempty"`
	GrantedAt   time.Time       `json:"granted_at"`
	ChangedAt   time.Time       `json:"changed_at"`
	AppliedAt   time.Time       `json:"applied_at,omitzero"`
}

// Key is the KV key of the grant.
func (g Grant) Key() string { return Key(g.VMKey, g.Backend, g.KeyName) }

// Key returns the KV key <vm>.<backend>.<key>.
func Key(vm, backend, keyName string) string { return vm + "." + backend + "." + keyName }

// ValidBackendName reports whether name can name a backend: 1 to 32
// characters of [a-z0-9-].
func ValidBackendName(name string) bool {
	if len(name) == 0 || len(name) > 32 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// Validate checks the identifying fields of g.
func (g Grant) Validate() error {
	switch {
	case !events.ValidVMKey(g.VMKey):
		return fmt.Errorf("grants: %q is not a VM key", g.VMKey)
	case !ValidBackendName(g.Backend):
		return fmt.Errorf("grants: backend %q: want 1 to 32 characters of [a-z0-9-]", g.Backend)
	case !keyrelease.ValidKeyName(g.KeyName):
		return fmt.Errorf("grants: key name %q: want 1 to %d characters of [A-Za-z0-9_-]", g.KeyName, keyrelease.MaxKeyNameLen)
	case g.State != Active && g.State != Suspended && g.State != Revoked:
		return fmt.Errorf("grants: state %q", g.State)
	}
	return nil
}

// Entry is a grant with its KV revision.
type Entry struct {
	Grant
	Revision uint64
}

// ErrNotFound is matched by errors.Is when a grant does not exist.
var ErrNotFound = errors.New("grants: no such grant")

// ErrExists is matched by errors.Is when creating a grant that exists.
var ErrExists = errors.New("grants: grant exists")

// Store reads and writes grants.
type Store struct {
	kv     jetstream.KeyValue
	stream jetstream.Stream
	nc     *nats.Conn
}

// Open opens the vigil-grants bucket (which events.Provision creates).
func Open(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) (*Store, error) {
	kv, err := js.KeyValue(ctx, events.BucketGrants)
	if err != nil {
		return nil, fmt.Errorf("grants: open bucket %s: %w", events.BucketGrants, err)
	}
	st, err := js.Stream(ctx, "KV_"+events.BucketGrants)
	if err != nil {
		return nil, fmt.Errorf("grants: open bucket stream: %w", err)
	}
	return &Store{kv: kv, stream: st, nc: nc}, nil
}

// Get reads a grant from the stream leader, so that a revocation stored a
// moment ago is seen.
func (s *Store) Get(ctx context.Context, key string) (Entry, error) {
	e, err := kvlast.Get(ctx, s.nc, events.BucketGrants, key)
	if bus.IsKeyMissing(err) {
		return Entry{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if err != nil {
		return Entry{}, err
	}
	var g Grant
	if err := json.Unmarshal(e.Value, &g); err != nil {
		return Entry{}, fmt.Errorf("grants: %s: unreadable record: %w", key, err)
	}
	return Entry{Grant: g, Revision: e.Revision}, nil
}

// Create stores a new grant; it fails with ErrExists when one exists.
func (s *Store) Create(ctx context.Context, g Grant) (Entry, error) {
	if err := g.Validate(); err != nil {
		return Entry{}, err
	}
	b, err := json.Marshal(g)
	if err != nil {
		return Entry{}, err
	}
	rev, err := s.kv.Create(ctx, g.Key(), b)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return Entry{}, fmt.Errorf("%w: %s", ErrExists, g.Key())
	}
	if err != nil {
		return Entry{}, fmt.Errorf("grants: create %s: %w", g.Key(), err)
	}
	return Entry{Grant: g, Revision: rev}, nil
}

// Update applies fn to the current grant and stores the result with a
// compare-and-set, retrying from a fresh read when another writer came
// first. fn reports whether it changed the grant; nothing is written when
// it did not. Update returns the grant as stored and whether it wrote.
func (s *Store) Update(ctx context.Context, key string, fn func(*Grant) (bool, error)) (Entry, bool, error) {
	for attempt := 0; ; attempt++ {
		cur, err := s.Get(ctx, key)
		if err != nil {
			return Entry{}, false, err
		}
		g := cur.Grant
		g.BackendData = append(json.RawMessage(nil), cur.BackendData...)
		changed, err := fn(&g)
		if err != nil || !changed {
			return cur, false, err
		}
		if err := g.Validate(); err != nil {
			return cur, false, err
		}
		b, err := json.Marshal(g)
		if err != nil {
			return cur, false, err
		}
		rev, err := s.kv.Update(ctx, key, b, cur.Revision)
		if err == nil {
			return Entry{Grant: g, Revision: rev}, true, nil
		}
		if !bus.IsRevisionConflict(err) || attempt >= 50 {
			return cur, false, fmt.Errorf("grants: update %s: %w", key, err)
		}
		if ctx.Err() != nil {
			return cur, false, ctx.Err()
		}
	}
}

// Delete removes a grant.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.kv.Delete(ctx, key); err != nil {
		return fmt.Errorf("grants: delete %s: %w", key, err)
	}
	return nil
}

// Keys lists the keys of the grants of vm, or of every VM when vm is ""
// (including keys deleted lately: reading those gives ErrNotFound).
func (s *Store) Keys(ctx context.Context, vm string) ([]string, error) {
	filter := ">"
	if vm != "" {
		if !events.ValidVMKey(vm) {
			return nil, fmt.Errorf("grants: %q is not a VM key", vm)
		}
		filter = vm + ".>"
	}
	return s.keys(ctx, filter)
}

// keys lists the keys matching filter from the bucket stream's subject
// state: one request to the stream leader. Keys whose latest entry is a
// delete marker are listed too; reading them gives ErrNotFound.
func (s *Store) keys(ctx context.Context, filter string) ([]string, error) {
	prefix := "$KV." + events.BucketGrants + "."
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(prefix+filter))
	if err != nil {
		return nil, fmt.Errorf("grants: list %s: %w", filter, err)
	}
	keys := make([]string, 0, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		keys = append(keys, strings.TrimPrefix(subj, prefix))
	}
	sort.Strings(keys)
	return keys, nil
}

// BestState returns the most usable state among the grants of vm on
// backend: Active as soon as one grant is active, else Suspended when one
// is, else Revoked; ErrNotFound when vm has no grant there. A VM without
// grants costs one request to the stream leader.
func (s *Store) BestState(ctx context.Context, vm, backend string) (State, error) {
	if !events.ValidVMKey(vm) || !ValidBackendName(backend) {
		return "", fmt.Errorf("grants: VM %q backend %q", vm, backend)
	}
	keys, err := s.keys(ctx, vm+"."+backend+".*")
	if err != nil {
		return "", err
	}
	var best State
	for _, k := range keys {
		e, err := s.Get(ctx, k)
		switch {
		case errors.Is(err, ErrNotFound):
			continue // deleted
		case err != nil:
			return "", err
		case e.State == Active:
			return Active, nil
		case e.State == Suspended || best == "":
			best = e.State
		}
	}
	if best == "" {
		return "", fmt.Errorf("%w: VM %s on %s", ErrNotFound, vm, backend)
	}
	return best, nil
}

// ForKey returns the grants of every VM for keyName on backend.
func (s *Store) ForKey(ctx context.Context, backend, keyName string) ([]Entry, error) {
	if !ValidBackendName(backend) || !keyrelease.ValidKeyName(keyName) {
		return nil, fmt.Errorf("grants: backend %q key %q", backend, keyName)
	}
	keys, err := s.keys(ctx, "*."+backend+"."+keyName)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, keys)
}

// List returns the grants of vm, or of every VM when vm is "", sorted by key.
func (s *Store) List(ctx context.Context, vm string) ([]Entry, error) {
	keys, err := s.Keys(ctx, vm)
	if err != nil {
		return nil, err
	}
	return s.get(ctx, keys)
}

func (s *Store) get(ctx context.Context, keys []string) ([]Entry, error) {
	out := make([]Entry, 0, len(keys))
	for _, k := range keys {
		e, err := s.Get(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}
