package busauth_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
)

var update = flag.Bool("update", false, "rewrite the permission table of docs/security.md")

// TestPermissionTableInSecurityDoc: the permission table of
// docs/security.md is busauth.PermissionsMarkdown, what the account
// enforces.
func TestPermissionTableInSecurityDoc(t *testing.T) {
	const begin, end = "<!-- busauth:permissions (generated) -->\n", "<!-- /busauth:permissions -->"
	path := filepath.Join("..", "..", "docs", "security.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no permission table between %q and %q", path, begin, end)
	}
	i += len(begin)
	want := busauth.PermissionsMarkdown()
	if doc[i:j] == want {
		return
	}
	if !*update {
		t.Fatalf("the permission table of %s differs from busauth.PermissionsMarkdown; run go test ./pkg/busauth -run TestPermissionTableInSecurityDoc -update", path)
	}
	if err := os.WriteFile(path, []byte(doc[:i]+want+doc[j:]), 0o644); err != nil {
		t.Fatal(err)
	}
}
