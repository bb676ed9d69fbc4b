package collateral

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/natstest"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func exercise(t *testing.T, c Cache, clk *clock) {
	t.Helper()
	ctx := context.Background()
	if _, err := c.Get(ctx, "amd.vcek.Milan.abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("missing key: %v", err)
	}
	if err := c.Put(ctx, "amd.vcek.Milan.abc", []byte("der"), clk.t.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, "intel.pcs.forever", []byte("x"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	v, err := c.Get(ctx, "amd.vcek.Milan.abc")
	if err != nil || string(v) != "der" {
		t.Fatalf("get: %q %v", v, err)
	}
	clk.t = clk.t.Add(2 * time.Hour)
	if _, err := c.Get(ctx, "amd.vcek.Milan.abc"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired key: %v", err)
	}
	if v, err := c.Get(ctx, "intel.pcs.forever"); err != nil || string(v) != "x" {
		t.Fatalf("no-expiry key: %q %v", v, err)
	}
	for _, bad := range []string{"", "a b", "a..b", ".a", "a/b", "a*"} {
		if err := c.Put(ctx, bad, nil, time.Time{}); err == nil {
			t.Fatalf("key %q accepted", bad)
		}
	}
	if err := c.Put(ctx, "big", make([]byte, MaxValueSize+1), time.Time{}); err == nil {
		t.Fatal("oversized value accepted")
	}
}

func TestMemory(t *testing.T) {
	clk := &clock{t: time.Now()}
	m := NewMemory(0)
	m.now = clk.now
	exercise(t, m, clk)
}

func TestMemoryBounded(t *testing.T) {
	m := NewMemory(3)
	ctx := context.Background()
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		if err := m.Put(ctx, k, []byte(k), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.entries) != 3 {
		t.Fatalf("%d entries, bound 3", len(m.entries))
	}
	if v, err := m.Get(ctx, "e"); err != nil || string(v) != "e" {
		t.Fatal("newest entry evicted")
	}
}

func TestKV(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx := context.Background()
	kv, err := OpenKV(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	kv.now = clk.now
	exercise(t, kv, clk)

	// A second worker sees what the first stored.
	other, err := OpenKV(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := other.Get(ctx, "intel.pcs.forever"); err != nil || string(v) != "x" {
		t.Fatalf("shared read: %q %v", v, err)
	}
}
