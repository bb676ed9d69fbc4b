// Package collateral is where attestation collateral (AMD VCEKs and CRLs,
// Intel PCS responses) comes from, so that a fleet does not hammer AMD KDS
// or Intel PCS: the Cache interface, an in-memory cache and one on the
// JetStream KV bucket vigil-collateral shared by all workers, and the
// Fetcher that GETs what no cache holds, collapsing concurrent fetches and
// backing off after failures.
//
// It transports and stores bytes and trusts none of them: which answers are
// genuine is verification's decision (package evidence checks every answer
// against its pinned roots before it is cached, and again when it is read),
// so everything that needs the trust anchors stays there.
package collateral

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// ErrNotFound is returned by Get when a key is absent or expired.
var ErrNotFound = errors.New("collateral: not found")

// MaxValueSize bounds stored values (the KV bucket allows 1 MiB).
const MaxValueSize = 512 << 10

// Cache stores opaque collateral under keys made of [A-Za-z0-9._=-] tokens.
// Implementations are safe for concurrent use.
type Cache interface {
	// Get returns the value stored under key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put stores value under key until expires (zero: no expiry).
	Put(ctx context.Context, key string, value []byte, expires time.Time) error
}

var keyRE = regexp.MustCompile(`^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$`)

// ValidKey reports whether key is acceptable to every Cache.
func ValidKey(key string) bool { return len(key) <= 512 && keyRE.MatchString(key) }

func check(key string, value []byte) error {
	if !ValidKey(key) {
		return fmt.Errorf("collateral: invalid key %q", key)
	}
	if len(value) > MaxValueSize {
		return fmt.Errorf("collateral: value of %d bytes exceeds %d", len(value), MaxValueSize)
	}
	return nil
}

// Memory is an in-memory Cache bounded to a number of entries.
type Memory struct {
	mu      sync.Mutex
	max     int
	now     func() time.Time
	entries map[string]memEntry
}

type memEntry struct {
	value   []byte
	expires time.Time
}

// NewMemory returns an in-memory cache holding at most maxEntries (default 10000).
func NewMemory(maxEntries int) *Memory {
	if maxEntries <= 0 {
		maxEntries = 10000
	}
	return &Memory{max: maxEntries, now: time.Now, entries: make(map[string]memEntry)}
}

// Get implements Cache.
func (m *Memory) Get(_ context.Context, key string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e, ok := m.entries[key]
	if !ok {
		return nil, ErrNotFound
	}
	if !e.expires.IsZero() && !m.now().Before(e.expires) {
		delete(m.entries, key)
		return nil, ErrNotFound
	}
	return append([]byte(nil), e.value...), nil
}

// Put implements Cache.
func (m *Memory) Put(_ context.Context, key string, value []byte, expires time.Time) error {
	if err := check(key, value); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.entries[key]; !ok && len(m.entries) >= m.max {
		// Evict expired entries first, then an arbitrary one.
		now := m.now()
		for k, e := range m.entries {
			if !e.expires.IsZero() && !now.Before(e.expires) {
				delete(m.entries, k)
			}
		}
		for k := range m.entries {
			if len(m.entries) < m.max {
				break
			}
			delete(m.entries, k)
		}
	}
	m.entries[key] = memEntry{value: append([]byte(nil), value...), expires: expires}
	return nil
}

// KV is a Cache on a JetStream key-value bucket (events.BucketCollateral).
// Values carry their own expiry, since the bucket has no TTL.
type KV struct {
	kv  jetstream.KeyValue
	now func() time.Time
}

// NewKV wraps an open bucket.
func NewKV(kv jetstream.KeyValue) *KV { return &KV{kv: kv, now: time.Now} }

// OpenKV opens the vigil-collateral bucket (provisioned by events.Provision).
func OpenKV(ctx context.Context, js jetstream.JetStream) (*KV, error) {
	kv, err := js.KeyValue(ctx, events.BucketCollateral)
	if err != nil {
		return nil, fmt.Errorf("collateral: open bucket %s: %w", events.BucketCollateral, err)
	}
	return NewKV(kv), nil
}

type kvRecord struct {
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	StoredAt  time.Time `json:"stored_at"`
	Data      []byte    `json:"data"`
}

// Get implements Cache.
func (k *KV) Get(ctx context.Context, key string) ([]byte, error) {
	if !ValidKey(key) {
		return nil, fmt.Errorf("collateral: invalid key %q", key)
	}
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("collateral: get %s: %w", key, err)
	}
	var rec kvRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return nil, fmt.Errorf("collateral: record %s: %w", key, err)
	}
	if !rec.ExpiresAt.IsZero() && !k.now().Before(rec.ExpiresAt) {
		return nil, ErrNotFound
	}
	return rec.Data, nil
}

// Put implements Cache.
func (k *KV) Put(ctx context.Context, key string, value []byte, expires time.Time) error {
	if err := check(key, value); err != nil {
		return err
	}
	rec, err := json.Marshal(kvRecord{ExpiresAt: expires.UTC(), StoredAt: k.now().UTC(), Data: value})
	if err != nil {
		return err
	}
	if _, err := k.kv.Put(ctx, key, rec); err != nil {
		return fmt.Errorf("collateral: put %s: %w", key, err)
	}
	return nil
}
