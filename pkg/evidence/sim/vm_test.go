package sim

import (
	"strings"
	"testing"
)

// TestFleetNamesAreUnique: VMs an authority makes never share a name, even
// when their vmIds' first 8 hex digits (the name) would collide by chance.
func TestFleetNamesAreUnique(t *testing.T) {
	a, err := NewAuthority(AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 300_000 {
		p := a.uniqueVMID()[:8]
		if seen[p] {
			t.Fatalf("name sim-%s given twice", strings.ToLower(p))
		}
		seen[p] = true
	}
}
