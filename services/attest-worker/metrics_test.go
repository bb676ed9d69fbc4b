package attestworker

import (
	"fmt"
	"testing"
)

// The attribute cache hands out one option per key and value and stops
// growing at its bound (job reasons come from outside the worker).
func TestAttrCacheBounded(t *testing.T) {
	var c attrCache
	if a, b := c.get("outcome", "verdict"), c.get("outcome", "verdict"); a != b {
		t.Fatal("the same attribute got two options")
	}
	for i := range 2 * maxCachedAttrs {
		if c.get("reason", fmt.Sprint(i)) == nil {
			t.Fatal("nil option")
		}
	}
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	if n > maxCachedAttrs || int(c.n.Load()) != n {
		t.Fatalf("cache holds %d options (counted %d), bound %d", n, c.n.Load(), maxCachedAttrs)
	}
}
