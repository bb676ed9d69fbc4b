package arm

import (
	"time"

	"golang.org/x/time/rate"
)

// subQueue is one subscription's enrichment queue: its entries by due time,
// its read budget and how long it is held.
type subQueue struct {
	queue entryHeap
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
	if due := q.queue[0].due; due.After(q.blocked) {
		return due
	}
	return q.blocked
}

// entryHeap orders entries by due time.
type entryHeap []*entry

func (h entryHeap) Len() int           { return len(h) }
func (h entryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *entryHeap) Push(x any) {
	en := x.(*entry)
	en.index = len(*h)
	*h = append(*h, en)
}
func (h *entryHeap) Pop() any {
	old := *h
	n := len(old)
	en := old[n-1]
	old[n-1] = nil
	en.index = -1
	*h = old[:n-1]
	return en
}

// subHeap orders subscriptions with entries waiting by when their next
// read may start.
type subHeap []*subQueue

func (h subHeap) Len() int           { return len(h) }
func (h subHeap) Less(i, j int) bool { return h[i].readyAt().Before(h[j].readyAt()) }
func (h subHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *subHeap) Push(x any) {
	q := x.(*subQueue)
	q.index = len(*h)
	*h = append(*h, q)
}
func (h *subHeap) Pop() any {
	old := *h
	n := len(old)
	q := old[n-1]
	old[n-1] = nil
	q.index = -1
	*h = old[:n-1]
	return q
}
