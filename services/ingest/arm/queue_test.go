package arm

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// TestSubscriptionOutOfBudgetWaitsAsAWhole: once a subscription's read
// budget is spent, its queued VMs wait as a whole (no entry is touched:
// a fleet queued behind ARM's budget costs nothing until its turn) while
// another subscription's VMs are read, and the wait asked for is the
// budget's next token.
func TestSubscriptionOutOfBudgetWaitsAsAWhole(t *testing.T) {
	const (
		subA, subB = "00000000-0000-4000-8000-00000000000a", "00000000-0000-4000-8000-00000000000b"
		queued     = 5000
		burst      = 3
	)
	e := NewEnricher(EnricherConfig{Debounce: time.Millisecond, PerSubscriptionRate: 1, PerSubscriptionBurst: burst}, nil, nil)
	ctx := context.Background()
	for i := range queued {
		e.Request(ctx, normalize.NewVMID(subA, "rg", fmt.Sprintf("vm-%05d", i)), time.Now())
	}
	e.Request(ctx, normalize.NewVMID(subB, "rg", "other"), time.Now())
	due := map[string]time.Time{}
	for k, en := range e.entries {
		due[k] = en.due
	}

	at := time.Now().Add(time.Second)
	read := map[string]int{}
	var wait time.Duration
	for {
		en, w := e.next(at)
		if en == nil {
			wait = w
			break
		}
		read[en.vm.Subscription]++
	}
	if read[subA] != burst || read[subB] != 1 {
		t.Fatalf("read %v before waiting; want the burst of %d of %s and the one VM of %s", read, burst, subA, subB)
	}
	if wait <= 0 || wait > time.Second {
		t.Fatalf("asked to wait %s; want the budget's next token, within 1 s", wait)
	}
	touched := 0
	for k, en := range e.entries {
		if !en.inFlight && !en.due.Equal(due[k]) {
			touched++
		}
	}
	if touched != 0 {
		t.Fatalf("%d of the %d queued VMs were rescheduled one by one; the subscription should wait as a whole", touched, queued-burst)
	}
	// A 429 holds the subscription for its Retry-After, the other goes on.
	e.Request(ctx, normalize.NewVMID(subB, "rg", "second"), time.Now())
	e.mu.Lock()
	e.block(e.subQueue(subA), at.Add(time.Hour))
	e.mu.Unlock()
	en, _ := e.next(at.Add(2 * time.Second))
	if en == nil || en.vm.Subscription != subB {
		t.Fatalf("next %+v while %s is held; want %s's VM", en, subA, subB)
	}
	if en, w := e.next(at.Add(2 * time.Second)); en != nil || w < 59*time.Minute {
		t.Fatalf("next %+v, wait %s while %s is held for an hour", en, w, subA)
	}
}

// BenchmarkNextBehindTheBudget: choosing the next read while 20,000 VMs
// wait for their subscription's budget.
func BenchmarkNextBehindTheBudget(b *testing.B) {
	e := NewEnricher(EnricherConfig{Debounce: time.Millisecond, PerSubscriptionRate: 20, PerSubscriptionBurst: 1}, nil, nil)
	for i := range 20_000 {
		e.Request(context.Background(), normalize.NewVMID("00000000-0000-4000-8000-00000000000a", "rg", fmt.Sprintf("vm-%05d", i)), time.Now())
	}
	at := time.Now().Add(time.Second)
	for b.Loop() {
		if en, _ := e.next(at); en != nil {
			e.release(en)
		}
	}
}
