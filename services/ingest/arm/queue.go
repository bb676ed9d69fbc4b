package arm

import (
	"time"

	"golang.org/x/time/rate"
)

// subQueue is one subscription's enrichment queue: its entries by due time,
// its read budget and how long it is held.
type subQueue struct {
	queue heapOf[*entry] // by due time
	lim   *rate.Limiter
	// blocked: no read starts before (a 429's Retry-After, or when the
	// budget has its next token).
	blocked time.Time
	index   int // in Enricher.ready; -1 when its queue is empty
	// members counts the Enricher's entries of the subscription, queued
	// or in flight: a queue with none is forgotten once its budget is
	// full again.
	members int
}

// readyAt is when q's first entry may be read; q.queue is not empty.
func (q *subQueue) readyAt() time.Time {
	if due := q.queue.head().due; due.After(q.blocked) {
		return due
	}
	return q.blocked
}

// heapOf is a container/heap of items that keep their index in it (for
// heap.Fix and heap.Remove), ordered by less.
type heapOf[T interface{ setIndex(int) }] struct {
	items []T
	less  func(a, b T) bool
}

func (h *heapOf[T]) Len() int           { return len(h.items) }
func (h *heapOf[T]) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *heapOf[T]) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].setIndex(i)
	h.items[j].setIndex(j)
}
func (h *heapOf[T]) Push(x any) {
	it := x.(T)
	it.setIndex(len(h.items))
	h.items = append(h.items, it)
}
func (h *heapOf[T]) Pop() any {
	n := len(h.items) - 1
	it := h.items[n]
	var zero T
	h.items[n] = zero
	it.setIndex(-1)
	h.items = h.items[:n]
	return it
}

// head is the first item; the heap is not empty.
func (h *heapOf[T]) head() T { return h.items[0] }

func (en *entry) setIndex(i int)   { en.index = i }
func (q *subQueue) setIndex(i int) { q.index = i }

// byDue orders entries by due time; byReady subscriptions by when their
// next read may start.
func byDue(a, b *entry) bool      { return a.due.Before(b.due) }
func byReady(a, b *subQueue) bool { return a.readyAt().Before(b.readyAt()) }
