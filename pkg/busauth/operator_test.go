package busauth_test

import (
	"testing"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/busauth"
)

// TestOperatorIsTheOperatorJWTSubject: the operator's public key is what
// its JWT names, before and after the set is written and loaded again.
func TestOperatorIsTheOperatorJWTSubject(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	loaded, err := busauth.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*busauth.Set{"init": set, "loaded": loaded} {
		oc, err := jwt.DecodeOperatorClaims(s.OperatorJWT())
		if err != nil {
			t.Fatal(err)
		}
		if got := s.Operator(); got != oc.Subject || !nkeys.IsValidPublicOperatorKey(got) {
			t.Errorf("%s: Operator() = %q, want the operator JWT's subject %q", name, got, oc.Subject)
		}
	}
}
