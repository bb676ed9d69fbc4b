package evidence_test

import (
	"context"
	"crypto/sha256"
	"sync"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

func newAuthority(t testing.TB, seed string) *sim.Authority {
	t.Helper()
	a, err := sim.NewAuthority(sim.AuthorityConfig{Seed: seed})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestSimulatedEvidenceNeedsTestRoots(t *testing.T) {
	auth := newAuthority(t, "")
	ctx := context.Background()
	plain, err := evidence.NewVerifier(evidence.Config{Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: newAuthority(t, "another seed").TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	// Roots shipped as PEM to another process work like the Authority's own.
	roots, err := evidence.ParseTestRootsPEM(auth.TrustRoots().MarshalPEM())
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: roots})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ platform, product, want string }{
		{evidence.PlatformAzureSNP, "Milan", evidence.ReasonSNPVCEKInvalid},
		{evidence.PlatformAzureSNP, "Genoa", evidence.ReasonSNPVCEKInvalid},
		{evidence.PlatformAzureTDX, "", evidence.ReasonTDXPCKChainInvalid},
	} {
		vm, err := auth.NewVM(sim.VMConfig{Platform: tc.platform, ProductLine: tc.product, AK: sim.AKECDSAP256})
		if err != nil {
			t.Fatal(err)
		}
		nonce := evidence.NewNonce()
		raw, err := vm.Respond(nonce)
		if err != nil {
			t.Fatal(err)
		}
		for name, v := range map[string]*evidence.Verifier{"pinned roots only": plain, "other seed": foreign} {
			if name == "other seed" && tc.platform == evidence.PlatformAzureSNP {
				continue // the AMD test chain is go-sev-guest's, the same for every seed
			}
			res, err := v.Verify(ctx, raw, evidence.Expect{Nonce: nonce})
			if err != nil {
				t.Fatal(err)
			}
			if res.Genuine || res.Failures[0].Code != tc.want {
				t.Fatalf("%s %s/%s: genuine %v failures %v", name, tc.platform, tc.product, res.Genuine, res.Failures)
			}
		}
		res, err := loaded.Verify(ctx, raw, evidence.Expect{Nonce: nonce})
		if err != nil || !res.Genuine {
			t.Fatalf("roots from PEM: %v %v", err, res.Failures)
		}
		if tc.product != "" && res.SNP.ProductLine != tc.product {
			t.Fatalf("product %s", res.SNP.ProductLine)
		}
	}
}

func TestKeyBindingExtraData(t *testing.T) {
	auth := newAuthority(t, "")
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	nonce, pub := evidence.NewNonce(), []byte("ephemeral public key")
	bind := bindKey(nonce, pub)
	b, err := vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: bind})
	if err != nil {
		t.Fatal(err)
	}
	res := v.VerifyBundle(context.Background(), b, evidence.Expect{Nonce: nonce, ExtraData: bind})
	if !res.Genuine {
		t.Fatalf("bound quote rejected: %v", res.Failures)
	}
	for name, exp := range map[string]evidence.Expect{
		"nonce only":     {Nonce: nonce},
		"other key":      {Nonce: nonce, ExtraData: bindKey(nonce, []byte("attacker key"))},
		"other nonce":    {Nonce: evidence.NewNonce(), ExtraData: bind},
		"binding absent": {},
	} {
		res := v.VerifyBundle(context.Background(), b, exp)
		if res.Genuine || !res.HasFailure(evidence.ReasonTPMNonceMismatch) {
			t.Fatalf("%s: genuine %v failures %v", name, res.Genuine, res.Failures)
		}
	}
}

func TestConcurrentVerification(t *testing.T) {
	auth := newAuthority(t, "")
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots(), CacheSize: 4})
	if err != nil {
		t.Fatal(err)
	}
	vms, err := auth.NewFleet(12, sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	tdxVMs, err := auth.NewFleet(4, sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	vms = append(vms, tdxVMs...)
	pol := auth.Policy()
	var wg sync.WaitGroup
	errs := make(chan string, len(vms)*3)
	for i, vm := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for round := range 3 {
				if i%5 == 0 && round == 1 {
					vm.SetFaults(sim.Faults{BrokenBinding: true})
				} else {
					vm.SetFaults(sim.Faults{})
				}
				nonce := evidence.NewNonce()
				raw, err := vm.Respond(nonce)
				if err != nil {
					errs <- err.Error()
					return
				}
				verdict, _, err := v.Attest(context.Background(), raw, evidence.Expect{Nonce: nonce, VMID: vm.VMID(), VMKey: vm.VMKey()}, pol, evidence.AppraiseOptions{})
				want := events.VerdictAffirming
				if i%5 == 0 && round == 1 {
					want = events.VerdictContraindicated
				}
				if err != nil || verdict.Status != want || verdict.VMKey != vm.VMKey() {
					errs <- vm.Platform() + " " + verdict.Status + " " + want
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestVMKeyMismatch(t *testing.T) {
	auth := newAuthority(t, "")
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	a, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	b, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		t.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := a.Respond(nonce)
	if err != nil {
		t.Fatal(err)
	}
	// B's evidence request answered by A: both identity checks fire.
	verdict, _, err := v.Attest(context.Background(), raw, evidence.Expect{Nonce: nonce, VMID: b.VMID(), VMKey: b.VMKey()}, auth.Policy(), evidence.AppraiseOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if verdict.Status != events.VerdictContraindicated || verdict.Reasons[0].Code != evidence.ReasonIdentityVMIDMismatch || verdict.Reasons[1].Code != evidence.ReasonIdentityVMKeyMismatch {
		t.Fatalf("verdict %s %v", verdict.Status, verdict.Reasons)
	}
}

// bindKey is an extraData that binds a key to the nonce, as key release
// does (keyrelease.Binding has the protocol's exact formula).
func bindKey(nonce, pub []byte) []byte {
	h := sha256.New()
	h.Write(nonce)
	h.Write(pub)
	return h.Sum(nil)
}
