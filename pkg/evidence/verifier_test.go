package evidence_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"

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

// TestChallengeBindingVector pins ChallengeBinding's encoding with vectors
// computed apart from the code (sha256sum over the label, a zero byte, the
// big-endian u32 length and the nonce): agents and verifiers built apart
// must agree on it byte for byte.
func TestChallengeBindingVector(t *testing.T) {
	for _, tc := range []struct {
		nonce []byte
		want  string
	}{
		{nil, "db943f4615e3347c1170b14341be7b11513c7803b627fb1de284344a326de9a9"},
		{[]byte("challenge"), "1fc63cbceb704dedc5c3f50de0744ea5dc10c1c58b2855b454c88c88b4ab5622"},
		{bytes.Repeat([]byte{0xAB}, 64), "3a28c7590c25e35912a2f600d68c21f65c7a8ac239be34d160c277f2d5fe66d9"},
	} {
		if got := hex.EncodeToString(evidence.ChallengeBinding(tc.nonce)); got != tc.want {
			t.Errorf("ChallengeBinding(%x) = %s, want %s", tc.nonce, got, tc.want)
		}
	}
}

// TestRawNonceQuoteIsNotAnAttestation is the verifier's half of the
// challenge-oracle defence: a quote over the nonce as it is (what an agent
// quoting caller-chosen bytes makes, and what another protocol's binding
// looks like once relayed as a nonce) is not an answer to a Vigil challenge.
// Only BindRawNonce, for inspecting other tools' evidence, accepts it.
func TestRawNonceQuoteIsNotAnAttestation(t *testing.T) {
	auth := newAuthority(t, "")
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureSNP})
	if err != nil {
		t.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := vm.Evidence(sim.Challenge{Nonce: nonce, ExtraData: nonce})
	if err != nil {
		t.Fatal(err)
	}
	labelled, err := vm.Evidence(sim.Challenge{Nonce: nonce})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		b       *evidence.Bundle
		exp     evidence.Expect
		genuine bool
		binding evidence.QuoteBinding
	}{
		{"raw quote, challenge expected", raw, evidence.Expect{Nonce: nonce}, false, evidence.BindChallenge},
		{"raw quote, no nonce given", raw, evidence.Expect{}, false, evidence.BindChallenge},
		{"raw quote, raw expected", raw, evidence.Expect{Nonce: nonce, Binding: evidence.BindRawNonce}, true, evidence.BindRawNonce},
		{"raw quote, any", raw, evidence.Expect{Nonce: nonce, Binding: evidence.BindAny}, true, evidence.BindRawNonce},
		{"labelled quote, challenge expected", labelled, evidence.Expect{Nonce: nonce}, true, evidence.BindChallenge},
		{"labelled quote, raw expected", labelled, evidence.Expect{Nonce: nonce, Binding: evidence.BindRawNonce}, false, evidence.BindRawNonce},
		{"labelled quote, any", labelled, evidence.Expect{Nonce: nonce, Binding: evidence.BindAny}, true, evidence.BindChallenge},
		{"labelled quote, release binding expected", labelled, evidence.Expect{Nonce: nonce, ExtraData: bindKey(nonce, []byte("pub"))}, false, evidence.BindChallenge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := v.VerifyBundle(context.Background(), tc.b, tc.exp)
			if res.Genuine != tc.genuine {
				t.Fatalf("genuine %v, want %v: %v", res.Genuine, tc.genuine, res.Failures)
			}
			if !tc.genuine && !res.HasFailure(evidence.ReasonTPMNonceMismatch) {
				t.Fatalf("failures %v, want %s", res.Failures, evidence.ReasonTPMNonceMismatch)
			}
			if res.Binding != tc.binding {
				t.Fatalf("binding %s, want %s", res.Binding, tc.binding)
			}
		})
	}
}

// TestEmptyNonceCapture: evidence captured with no qualifying data (an empty
// nonce, empty extraData) verifies when no nonce was issued; freshness is
// then not established, which the policy reports.
func TestEmptyNonceCapture(t *testing.T) {
	auth := newAuthority(t, "")
	v, err := evidence.NewVerifier(evidence.Config{Offline: true, TestRoots: auth.TrustRoots()})
	if err != nil {
		t.Fatal(err)
	}
	vm, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX})
	if err != nil {
		t.Fatal(err)
	}
	b, err := vm.Evidence(sim.Challenge{ExtraData: []byte{}})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	res, err := v.Verify(context.Background(), raw, evidence.Expect{Binding: evidence.BindAny})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Genuine || len(res.Nonce) != 0 || res.NonceChecked {
		t.Fatalf("genuine %v nonce %x checked %v: %v", res.Genuine, res.Nonce, res.NonceChecked, res.Failures)
	}
	if res, _ := v.Verify(context.Background(), raw, evidence.Expect{Nonce: evidence.NewNonce()}); res.Genuine {
		t.Fatal("a capture without a nonce passed for the answer to an issued nonce")
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
				res, err := v.Verify(context.Background(), raw, evidence.Expect{Nonce: nonce})
				if err != nil {
					errs <- err.Error()
					return
				}
				genuine := i%5 != 0 || round != 1
				if res.Genuine != genuine || res.BundleVMKey != vm.VMKey() {
					errs <- fmt.Sprintf("%s round %d: genuine %v (want %v), vm key %s: %v", vm.Platform(), round, res.Genuine, genuine, res.BundleVMKey, res.Failures)
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

// bindKey is an extraData that binds a key to the nonce, as key release
// does (keyrelease.Binding has the protocol's exact formula).
func bindKey(nonce, pub []byte) []byte {
	h := sha256.New()
	h.Write(nonce)
	h.Write(pub)
	return h.Sum(nil)
}
