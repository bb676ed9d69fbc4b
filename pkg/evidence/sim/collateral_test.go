package sim_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// counting wraps a handler and counts requests.
func counting(h http.Handler, n *atomic.Int64) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h.ServeHTTP(w, r)
	})
}

func TestVCEKFromKDSIsCached(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	kds := httptest.NewServer(counting(auth.KDS(), &hits))
	defer kds.Close()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, OmitVCEK: true})
	if err != nil {
		t.Fatal(err)
	}
	cache := collateral.NewMemory(0)
	ctx := context.Background()

	// Offline with an empty cache: the verifier cannot decide.
	off, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true, Collateral: cache})
	if err != nil {
		t.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := vm.Respond(nonce)
	if err != nil {
		t.Fatal(err)
	}
	verdict, res, err := appraise.Evidence(ctx, off, raw, evidence.Expect{Nonce: nonce}, auth.Policy(), appraise.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Unavailable || verdict.Status != events.VerdictNone || verdict.Reasons[0].Code != evidence.ReasonSNPVCEKUnavailable {
		t.Fatalf("offline without VCEK: status %s reasons %v", verdict.Status, verdict.Reasons)
	}

	// Online: fetched once from KDS, then from the cache, also by another
	// verifier sharing the cache while offline.
	on, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: kds.URL, Collateral: cache})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		nonce := evidence.NewNonce()
		raw, err := vm.Respond(nonce)
		if err != nil {
			t.Fatal(err)
		}
		res, err := on.Verify(ctx, raw, evidence.Expect{Nonce: nonce})
		if err != nil || !res.Genuine {
			t.Fatalf("online: %v %v", err, res.Failures)
		}
	}
	if hits.Load() != 1 {
		t.Fatalf("KDS hit %d times, want 1", hits.Load())
	}
	res, err = off.Verify(ctx, raw, evidence.Expect{Nonce: nonce})
	if err != nil || !res.Genuine {
		t.Fatalf("offline after caching: %v %v", err, res.Failures)
	}
}

func TestTDXCollateral(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	var hits atomic.Int64
	pcs := httptest.NewServer(counting(auth.PCS(), &hits))
	defer pcs.Close()
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), PCSURL: pcs.URL, TDXCollateral: true})
	if err != nil {
		t.Fatal(err)
	}
	pol := auth.Policy()
	pol.TDX.RequireTCBStatus = true
	ctx := context.Background()
	host0, host1 := 0, 1
	attest := func(vm *sim.VM) (events.Verdict, *evidence.Result) {
		t.Helper()
		nonce := evidence.NewNonce()
		raw, err := vm.Respond(nonce)
		if err != nil {
			t.Fatal(err)
		}
		verdict, res, err := appraise.Evidence(ctx, v, raw, evidence.Expect{Nonce: nonce, VMID: vm.VMID()}, pol, appraise.Options{})
		if err != nil {
			t.Fatal(err)
		}
		return verdict, res
	}

	healthy, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256, Host: &host0})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		verdict, res := attest(healthy)
		if verdict.Status != events.VerdictAffirming || res.TDX.TCBStatus != "UpToDate" || verdict.TCB.TCBStatus != "UpToDate" {
			t.Fatalf("healthy: status %s tcb %q reasons %v", verdict.Status, res.TDX.TCBStatus, verdict.Reasons)
		}
	}
	if hits.Load() != 3 { // TCB info, QE identity, PCK CRL: once each
		t.Fatalf("PCS hit %d times, want 3", hits.Load())
	}

	outdated, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256, Host: &host0, Faults: sim.Faults{LowTCB: true}})
	if err != nil {
		t.Fatal(err)
	}
	verdict, res := attest(outdated)
	if res.TDX.TCBStatus != "OutOfDate" || verdict.Status != events.VerdictContraindicated || !hasReason(verdict, appraise.ReasonPolicyTCBStatus) {
		t.Fatalf("outdated: status %s tcb %q reasons %v", verdict.Status, res.TDX.TCBStatus, verdict.Reasons)
	}

	if err := auth.RevokePCK(1); err != nil {
		t.Fatal(err)
	}
	onRevoked, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256, Host: &host1})
	if err != nil {
		t.Fatal(err)
	}
	// The cached CRL predates the revocation: a fresh verifier fetches again.
	v, err = evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), PCSURL: pcs.URL, TDXCollateral: true})
	if err != nil {
		t.Fatal(err)
	}
	verdict, _ = attest(onRevoked)
	if verdict.Status != events.VerdictContraindicated || verdict.Reasons[0].Code != evidence.ReasonTDXCollateralInvalid {
		t.Fatalf("revoked PCK: status %s reasons %v", verdict.Status, verdict.Reasons)
	}
	verdict, _ = attest(healthy)
	if verdict.Status != events.VerdictAffirming {
		t.Fatalf("other host after revocation: status %s reasons %v", verdict.Status, verdict.Reasons)
	}
}

func hasReason(v events.Verdict, code string) bool {
	for _, r := range v.Reasons {
		if r.Code == code {
			return true
		}
	}
	return false
}
