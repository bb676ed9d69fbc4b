package sim_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// verifyFresh has vm answer a fresh nonce and verifies the answer with v.
// It is safe to call from goroutines other than the test's.
func verifyFresh(ctx context.Context, v *evidence.Verifier, vm *sim.VM) (*evidence.Result, error) {
	nonce := evidence.NewNonce()
	raw, err := vm.Respond(nonce)
	if err != nil {
		return nil, fmt.Errorf("respond: %w", err)
	}
	return v.Verify(ctx, raw, evidence.Expect{Nonce: nonce})
}

// mustVerifyFresh is verifyFresh for the test's own goroutine.
func mustVerifyFresh(ctx context.Context, t testing.TB, v *evidence.Verifier, vm *sim.VM) *evidence.Result {
	t.Helper()
	res, err := verifyFresh(ctx, v, vm)
	if err != nil {
		t.Fatal(err)
	}
	return res
}
