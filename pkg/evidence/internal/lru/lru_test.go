package lru

import (
	"sync"
	"testing"
)

func TestEviction(t *testing.T) {
	c := New[int, string](2)
	c.Add(1, "a")
	c.Add(2, "b")
	if _, ok := c.Get(1); !ok { // 1 is now most recent
		t.Fatal("1 missing")
	}
	c.Add(3, "c") // evicts 2
	if _, ok := c.Get(2); ok {
		t.Fatal("2 not evicted")
	}
	if v, ok := c.Get(1); !ok || v != "a" {
		t.Fatal("1 evicted")
	}
	c.Add(1, "z")
	if v, _ := c.Get(1); v != "z" || c.Len() != 2 {
		t.Fatalf("update: %q len %d", v, c.Len())
	}
	c.Remove(1)
	if _, ok := c.Get(1); ok || c.Len() != 1 {
		t.Fatal("remove")
	}
}

func TestConcurrent(t *testing.T) {
	c := New[int, int](64)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				c.Add((g*1000+i)%100, i)
				c.Get(i % 100)
			}
		}()
	}
	wg.Wait()
	if c.Len() > 64 {
		t.Fatalf("len %d exceeds bound", c.Len())
	}
}

func TestBytes(t *testing.T) {
	c := NewBytes[int](2)
	k := []byte("chain")
	c.Add(k, 1)
	k[0] = 'C' // the cache keeps its own copy
	if _, ok := c.Get(k); ok {
		t.Fatal("hit for a changed key")
	}
	if v, ok := c.Get([]byte("chain")); !ok || v != 1 {
		t.Fatal("miss for the stored key")
	}
	c.Add([]byte("a"), 2)
	c.Add([]byte("b"), 3)
	if c.Len() != 2 {
		t.Fatalf("len %d", c.Len())
	}
}
