package lru

import (
	"bytes"
	"hash/maphash"
)

// Bytes is a Cache keyed by byte strings: a fast keyed hash selects the
// entry and the stored key is compared in full, so a hash collision is a
// miss, never a wrong hit.
type Bytes[V any] struct {
	seed maphash.Seed
	c    *Cache[uint64, bytesEntry[V]]
}

type bytesEntry[V any] struct {
	key []byte
	val V
}

// NewBytes returns a Bytes cache holding at most size entries.
func NewBytes[V any](size int) *Bytes[V] {
	return &Bytes[V]{seed: maphash.MakeSeed(), c: New[uint64, bytesEntry[V]](size)}
}

// Get returns the value stored under key.
func (b *Bytes[V]) Get(key []byte) (V, bool) {
	e, ok := b.c.Get(maphash.Bytes(b.seed, key))
	if ok && bytes.Equal(e.key, key) {
		return e.val, true
	}
	var zero V
	return zero, false
}

// Add stores v under a copy of key.
func (b *Bytes[V]) Add(key []byte, v V) {
	b.c.Add(maphash.Bytes(b.seed, key), bytesEntry[V]{key: bytes.Clone(key), val: v})
}

// Len is the number of entries.
func (b *Bytes[V]) Len() int { return b.c.Len() }
