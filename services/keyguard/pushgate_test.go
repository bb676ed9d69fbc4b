package keyguard

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestPushGateCoalescesAndOrders: concurrent calls share pushes, pushes
// never overlap, and every call returns only after a push that began
// after the call did (so it read the caller's write); a failed push
// covers no one.
func TestPushGateCoalescesAndOrders(t *testing.T) {
	g := newPushGate()
	var (
		pushes, inFlight atomic.Int64
		mu               sync.Mutex
		starts           []time.Time
	)
	push := func(context.Context) error {
		if inFlight.Add(1) != 1 {
			t.Error("two pushes at once")
		}
		defer inFlight.Add(-1)
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		pushes.Add(1)
		time.Sleep(20 * time.Millisecond)
		return nil
	}
	const callers = 200
	var wg sync.WaitGroup
	for range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			began := time.Now()
			if err := g.do(context.Background(), push); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for _, s := range starts {
				if !s.Before(began) {
					return
				}
			}
			t.Errorf("a call that began at %s returned without a push begun after it (pushes began %v)", began, starts)
		}()
	}
	wg.Wait()
	if n := pushes.Load(); n < 1 || n > callers/4 {
		t.Fatalf("%d pushes for %d concurrent calls, want them coalesced", n, callers)
	}
	t.Logf("%d concurrent calls, %d pushes", callers, pushes.Load())

	// A failed push covers no one: the next call pushes again.
	before := pushes.Load()
	boom := errors.New("boom")
	if err := g.do(context.Background(), func(context.Context) error { return boom }); !errors.Is(err, boom) {
		t.Fatalf("failed push: %v", err)
	}
	if err := g.do(context.Background(), push); err != nil || pushes.Load() != before+1 {
		t.Fatalf("after a failed push: err %v, pushes %d, want %d", err, pushes.Load(), before+1)
	}

	// A call whose context ends while it waits for its turn gives up.
	hold := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = g.do(context.Background(), func(context.Context) error { close(started); <-hold; return nil })
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := g.do(ctx, push); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiting past its deadline: %v", err)
	}
	close(hold)
}
