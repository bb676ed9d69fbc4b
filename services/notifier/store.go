package notifier

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// ErrNotFound is matched by errors.Is for a subscription or silence that
// does not exist.
var ErrNotFound = errors.New("notifier: not found")

// Store is the notifier's durable state on the bus: subscriptions
// (vigil-alert-subscriptions, with history), silences
// (vigil-alert-silences) and the notifier's state (vigil-alert-state: its
// public key, each subscription's health, the last state of each alert
// key per subscription). The CLI and the notifier share it.
type Store struct {
	subs, silences, state jetstream.KeyValue
}

// OpenStore opens the buckets (vigil provision creates them).
func OpenStore(ctx context.Context, js jetstream.JetStream) (*Store, error) {
	var s Store
	for _, b := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{{events.BucketAlertSubscriptions, &s.subs}, {events.BucketAlertSilences, &s.silences}, {events.BucketAlertState, &s.state}} {
		kv, err := js.KeyValue(ctx, b.name)
		if err != nil {
			return nil, fmt.Errorf("notifier: bucket %s: %w", b.name, err)
		}
		*b.kv = kv
	}
	return &s, nil
}

// PublicKey is the notifier's public key, to seal sinks to.
func (s *Store) PublicKey(ctx context.Context) (string, error) {
	e, err := s.state.Get(ctx, KeyPublicKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", fmt.Errorf("%w: the notifier's public key (start vigil-notifier once: it publishes its key)", ErrNotFound)
	}
	if err != nil {
		return "", err
	}
	return string(e.Value()), nil
}

func (s *Store) putPublicKey(ctx context.Context, pub string) error {
	if e, err := s.state.Get(ctx, KeyPublicKey); err == nil && string(e.Value()) == pub {
		return nil
	}
	_, err := s.state.PutString(ctx, KeyPublicKey, pub)
	return err
}

// CreateSubscription stores a new subscription; it fails if the id is taken.
func (s *Store) CreateSubscription(ctx context.Context, sub Subscription) error {
	if err := sub.Validate(); err != nil {
		return err
	}
	b, err := json.Marshal(sub)
	if err != nil {
		return err
	}
	if _, err := s.subs.Create(ctx, sub.ID, b); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("%w: subscription %s exists", ErrInvalid, sub.ID)
		}
		return fmt.Errorf("notifier: store subscription %s: %w", sub.ID, err)
	}
	return nil
}

// Subscription returns subscription id and its revision.
func (s *Store) Subscription(ctx context.Context, id string) (Subscription, uint64, error) {
	e, err := s.subs.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Subscription{}, 0, fmt.Errorf("%w: subscription %s", ErrNotFound, id)
	}
	if err != nil {
		return Subscription{}, 0, err
	}
	var sub Subscription
	if err := json.Unmarshal(e.Value(), &sub); err != nil {
		return Subscription{}, 0, fmt.Errorf("notifier: subscription %s: %w", id, err)
	}
	return sub, e.Revision(), nil
}

// UpdateSubscription applies change to subscription id, with a revision
// check (retried on a concurrent change).
func (s *Store) UpdateSubscription(ctx context.Context, id string, change func(*Subscription) error) (Subscription, error) {
	for {
		sub, rev, err := s.Subscription(ctx, id)
		if err != nil {
			return sub, err
		}
		if err := change(&sub); err != nil {
			return sub, err
		}
		sub.Updated = time.Now().UTC()
		if err := sub.Validate(); err != nil {
			return sub, err
		}
		b, err := json.Marshal(sub)
		if err != nil {
			return sub, err
		}
		_, err = s.subs.Update(ctx, id, b, rev)
		if err == nil {
			return sub, nil
		}
		if !bus.IsRevisionConflict(err) {
			return sub, fmt.Errorf("notifier: update subscription %s: %w", id, err)
		}
	}
}

// DeleteSubscription deletes subscription id (its history stays).
func (s *Store) DeleteSubscription(ctx context.Context, id string) error {
	if _, _, err := s.Subscription(ctx, id); err != nil {
		return err
	}
	return s.subs.Delete(ctx, id)
}

// Subscriptions lists the subscriptions by id.
func (s *Store) Subscriptions(ctx context.Context) ([]Subscription, error) {
	keys, err := s.subs.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []Subscription
	for k := range keys.Keys() {
		sub, _, err := s.Subscription(ctx, k)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Health is a subscription's delivery health, as the notifier records it.
type Health struct {
	LastDelivery        time.Time `json:"last_delivery,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
	// FailingSince is the first failure of the current run of failures.
	FailingSince time.Time `json:"failing_since,omitzero"`
	// Unhealthy is set once failing lasted longer than the threshold; an
	// alert says so to the other subscriptions.
	Unhealthy bool `json:"unhealthy,omitempty"`
	// Disabled is set when the sink answered 410 Gone; resuming the
	// subscription lifts it.
	Disabled       bool      `json:"disabled,omitempty"`
	DisabledAt     time.Time `json:"disabled_at,omitzero"`
	DisabledReason string    `json:"disabled_reason,omitempty"`
	Delivered      uint64    `json:"delivered"`
	DeadLettered   uint64    `json:"dead_lettered"`
	Digests        uint64    `json:"digests"`
	Silenced       uint64    `json:"silenced"`
	UpdatedAt      time.Time `json:"updated_at"`
}

func healthKey(id string) string { return "health." + id }

// Health returns subscription id's health (zero when none is recorded).
func (s *Store) Health(ctx context.Context, id string) (Health, error) {
	var h Health
	e, err := s.state.Get(ctx, healthKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return h, nil
	}
	if err != nil {
		return h, err
	}
	err = json.Unmarshal(e.Value(), &h)
	return h, err
}

func (s *Store) putHealth(ctx context.Context, id string, h Health) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = s.state.Put(ctx, healthKey(id), b)
	return err
}

// keyState is the last state of an alert key for one subscription.
type keyState struct {
	Key   string            `json:"key"`
	State events.AlertState `json:"state"`
	At    time.Time         `json:"at"`
	Seq   uint64            `json:"seq"`
	// FiringDelivered says the subscription was sent the key's firing,
	// so its resolve follows.
	FiringDelivered bool `json:"firing_delivered,omitempty"`
	// Code is the alert's code at Seq; Notify says whether the alert at
	// Seq is sent (the state is recorded before the sending, so that a
	// redelivery of that alert is sent again, under the same id).
	Code   string `json:"code,omitempty"`
	Notify bool   `json:"notify,omitempty"`
	// rev is the state's revision in the bucket.
	rev uint64
}

func keyStatePrefix(sub string) string { return "key." + sub + "." }

func keyStateKey(sub, key string) string {
	h := sha256.Sum256([]byte(key))
	return keyStatePrefix(sub) + hex.EncodeToString(h[:16])
}

// keyStates reads every alert key state of subscription sub.
func (s *Store) keyStates(ctx context.Context, sub string) (map[string]keyState, error) {
	w, err := s.state.Watch(ctx, keyStatePrefix(sub)+"*", jetstream.IgnoreDeletes())
	if err != nil {
		return nil, err
	}
	defer func() { _ = w.Stop() }()
	out := map[string]keyState{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, errors.New("notifier: key state watch ended")
			}
			if e == nil {
				return out, nil
			}
			var ks keyState
			if json.Unmarshal(e.Value(), &ks) == nil && ks.Key != "" {
				ks.rev = e.Revision()
				out[ks.Key] = ks
			}
		}
	}
}

// keyState reads the state of alert key of subscription sub as stored
// now (the zero state when there is none).
func (s *Store) keyState(ctx context.Context, sub, key string) (keyState, error) {
	e, err := s.state.Get(ctx, keyStateKey(sub, key))
	if bus.IsKeyMissing(err) {
		return keyState{Key: key}, nil
	}
	if err != nil {
		return keyState{}, err
	}
	var ks keyState
	if err := json.Unmarshal(e.Value(), &ks); err != nil || ks.Key != key {
		return keyState{}, fmt.Errorf("notifier: alert key state %s unreadable", e.Key())
	}
	ks.rev = e.Revision()
	return ks, nil
}

// putKeyState writes ks over the revision it was decided from (ks.rev,
// 0 when there was none) and returns the new revision: every copy of the
// notifier shares a subscription's consumer, and a copy that decided
// from an older state gets an error bus.IsRevisionConflict recognises.
func (s *Store) putKeyState(ctx context.Context, sub string, ks keyState) (uint64, error) {
	b, err := json.Marshal(ks)
	if err != nil {
		return 0, err
	}
	if ks.rev == 0 {
		return s.state.Create(ctx, keyStateKey(sub, ks.Key), b)
	}
	return s.state.Update(ctx, keyStateKey(sub, ks.Key), b, ks.rev)
}

// PutSilence stores a silence (set or lifted).
func (s *Store) PutSilence(ctx context.Context, sl events.Silence) error {
	if err := ValidateSilence(sl); err != nil {
		return err
	}
	b, err := json.Marshal(sl)
	if err != nil {
		return err
	}
	_, err = s.silences.Put(ctx, sl.ID, b)
	return err
}

// Silences lists the stored silences, expired ones too, by creation.
func (s *Store) Silences(ctx context.Context) ([]events.Silence, error) {
	keys, err := s.silences.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var out []events.Silence
	for k := range keys.Keys() {
		e, err := s.silences.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		var sl events.Silence
		if err := json.Unmarshal(e.Value(), &sl); err != nil {
			continue
		}
		out = append(out, sl)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out, nil
}

// ValidateSilence checks a silence's id and patterns.
func ValidateSilence(sl events.Silence) error {
	switch {
	case !ValidID(sl.ID):
		return fmt.Errorf("%w: silence id %q", ErrInvalid, sl.ID)
	case len(sl.Match) == 0:
		return fmt.Errorf("%w: a silence needs at least one --match", ErrInvalid)
	case sl.Until.IsZero():
		return fmt.Errorf("%w: a silence needs an end (--for)", ErrInvalid)
	}
	return Filter{Glob: sl.Match}.Validate()
}

// silenceActive reports whether sl holds at now.
func silenceActive(sl events.Silence, now time.Time) bool {
	return !sl.Lifted && now.Before(sl.Until)
}
