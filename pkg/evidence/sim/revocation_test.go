package sim_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// forgedCRLKDS answers CRL requests with a CRL naming the real ARK's subject
// but signed by another key, and everything else from kds.
func forgedCRLKDS(t *testing.T, ark *x509.Certificate, kds http.Handler) http.Handler {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: ark.Subject, NotBefore: ark.NotBefore, NotAfter: ark.NotAfter,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	fake, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	crl, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		SignatureAlgorithm: x509.SHA384WithRSAPSS, Number: big.NewInt(1),
		ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(24 * time.Hour),
	}, fake, key)
	if err != nil {
		t.Fatal(err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/crl") {
			_, _ = w.Write(crl)
			return
		}
		kds.ServeHTTP(w, r)
	})
}

// TestSNPRevocation verifies simulated SEV-SNP evidence with
// Config.SNPRevocation against the simulated AMD KDS and its CRLs.
func TestSNPRevocation(t *testing.T) {
	milan0, milan1 := 0, 1
	for _, tc := range []struct {
		name string
		// prepare revokes certificates before the KDS serves its CRL.
		prepare func(t *testing.T, auth *sim.Authority)
		// kds wraps the simulated KDS; nil serves it as is.
		kds     func(t *testing.T, auth *sim.Authority, h http.Handler) http.Handler
		kdsDown bool
		offline bool
		// clock is added to the verifier's clock.
		clock time.Duration
		// want is the first reason code for the VM on host 0 ("": genuine);
		// wantIn a part of its message.
		want, wantIn    string
		wantUnavailable bool
		// host1Genuine: a Milan VM on host 1 must still verify.
		host1Genuine bool
	}{
		{name: "healthy", host1Genuine: true},
		{name: "revoked VCEK", prepare: func(t *testing.T, a *sim.Authority) { a.RevokeVCEK(0) },
			want: evidence.ReasonSNPCertRevoked, wantIn: "VCEK (serial", host1Genuine: true},
		{name: "revoked ASK", prepare: func(t *testing.T, a *sim.Authority) {
			if err := a.RevokeASK("Milan"); err != nil {
				t.Fatal(err)
			}
		}, want: evidence.ReasonSNPCertRevoked, wantIn: "Milan ASK (serial"},
		{name: "CRL signed by another key", kds: func(t *testing.T, a *sim.Authority, h http.Handler) http.Handler {
			return forgedCRLKDS(t, a.TrustRoots().AMD[0].ARK, h)
		}, want: evidence.ReasonSNPCRLInvalid, wantIn: "not signed by the pinned ARK"},
		{name: "expired CRL", clock: 8 * 24 * time.Hour, want: evidence.ReasonSNPCRLInvalid, wantIn: "expired"},
		{name: "KDS down", kdsDown: true, want: evidence.ReasonSNPCRLUnavailable, wantUnavailable: true},
		{name: "offline, empty cache", offline: true, want: evidence.ReasonSNPCRLUnavailable, wantUnavailable: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 2})
			if err != nil {
				t.Fatal(err)
			}
			var h http.Handler = auth.KDS()
			if tc.kds != nil {
				h = tc.kds(t, auth, h)
			}
			kds := httptest.NewServer(h)
			defer kds.Close()
			if tc.kdsDown {
				kds.Close()
			}
			if tc.prepare != nil {
				tc.prepare(t, auth)
			}
			v, err := evidence.NewVerifier(evidence.Config{
				TestRoots: auth.TrustRoots(), KDSURL: kds.URL, Offline: tc.offline, SNPRevocation: true,
				Now: func() time.Time { return time.Now().Add(tc.clock) },
			})
			if err != nil {
				t.Fatal(err)
			}
			verdict, res := attestSNP(t, v, auth, milan0)
			switch {
			case tc.want == "":
				if !res.Genuine || verdict.Status != events.VerdictAffirming {
					t.Fatalf("status %s reasons %v", verdict.Status, verdict.Reasons)
				}
			case len(res.Failures) == 0 || res.Failures[0].Code != tc.want || !strings.Contains(res.Failures[0].Message, tc.wantIn):
				t.Fatalf("failures %v, want first %s (%q)", res.Failures, tc.want, tc.wantIn)
			case res.Unavailable != tc.wantUnavailable:
				t.Fatalf("unavailable %v, want %v (%v)", res.Unavailable, tc.wantUnavailable, res.Failures)
			case tc.wantUnavailable && verdict.Status != events.VerdictNone:
				t.Fatalf("unavailable CRL: status %s, want none", verdict.Status)
			case !tc.wantUnavailable && verdict.Status != events.VerdictContraindicated:
				t.Fatalf("status %s, want contraindicated", verdict.Status)
			}
			if tc.host1Genuine {
				if verdict, res := attestSNP(t, v, auth, milan1); !res.Genuine {
					t.Fatalf("host 1: status %s reasons %v", verdict.Status, verdict.Reasons)
				}
			}
		})
	}
}

// TestSNPRevocationCRLCached checks that the CRL is fetched once per
// product line, kept in the collateral cache, and used from there offline.
func TestSNPRevocationCRLCached(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	var crlHits, otherHits atomic.Int64
	kdsH := auth.KDS()
	kds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/crl") {
			crlHits.Add(1)
		} else {
			otherHits.Add(1)
		}
		kdsH.ServeHTTP(w, r)
	}))
	defer kds.Close()
	cache := collateral.NewMemory(0)
	on, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: kds.URL, Collateral: cache, SNPRevocation: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if verdict, res := attestSNP(t, on, auth, i%2); !res.Genuine {
			t.Fatalf("online %d: status %s reasons %v", i, verdict.Status, verdict.Reasons)
		}
	}
	if crlHits.Load() != 1 || otherHits.Load() != 0 {
		t.Fatalf("KDS hit %d times for the CRL (want 1), %d times otherwise (want 0)", crlHits.Load(), otherHits.Load())
	}

	// Another verifier sharing the collateral cache, offline.
	off, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true, Collateral: cache, SNPRevocation: true})
	if err != nil {
		t.Fatal(err)
	}
	if verdict, res := attestSNP(t, off, auth, 0); !res.Genuine {
		t.Fatalf("offline from the cache: status %s reasons %v", verdict.Status, verdict.Reasons)
	}

	// A revocation after the CRL was cached shows with the next CRL only
	// (nextUpdate), as with AMD's: a verifier with an empty cache sees it.
	auth.RevokeVCEK(1)
	if verdict, res := attestSNP(t, on, auth, 1); !res.Genuine {
		t.Fatalf("cached CRL predating the revocation: status %s reasons %v", verdict.Status, verdict.Reasons)
	}
	fresh, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: kds.URL, SNPRevocation: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, res := attestSNP(t, fresh, auth, 1); !res.HasFailure(evidence.ReasonSNPCertRevoked) {
		t.Fatalf("fresh CRL: failures %v, want %s", res.Failures, evidence.ReasonSNPCertRevoked)
	}
	if crlHits.Load() != 2 {
		t.Fatalf("KDS hit %d times for the CRL, want 2", crlHits.Load())
	}
}

// TestSNPRevocationConcurrentFirstUse: verifications racing for a CRL not
// yet held share one KDS fetch, and all of them get its answer.
func TestSNPRevocationConcurrentFirstUse(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	auth.RevokeVCEK(1)
	var crlHits atomic.Int64
	kdsH := auth.KDS()
	release := make(chan struct{})
	kds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		crlHits.Add(1)
		<-release // hold the fetch until every verification waits for it
		kdsH.ServeHTTP(w, r)
	}))
	defer kds.Close()
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: kds.URL, SNPRevocation: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 8
	type outcome struct {
		host int
		res  *evidence.Result
		err  error
	}
	out := make(chan outcome, n)
	for i := range n {
		host := i % 2
		vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, Host: &host})
		if err != nil {
			t.Fatal(err)
		}
		nonce := evidence.NewNonce()
		raw, err := vm.Respond(nonce)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			res, err := v.Verify(context.Background(), raw, evidence.Expect{Nonce: nonce})
			out <- outcome{host, res, err}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	for range n {
		o := <-out
		if o.err != nil {
			t.Fatal(o.err)
		}
		if revoked := o.host == 1; o.res.Genuine == revoked || o.res.HasFailure(evidence.ReasonSNPCertRevoked) != revoked {
			t.Fatalf("host %d: genuine %v failures %v", o.host, o.res.Genuine, o.res.Failures)
		}
	}
	if crlHits.Load() != 1 {
		t.Fatalf("KDS hit %d times, want 1", crlHits.Load())
	}
}

// attestSNP attests a fresh Milan VM on a host (its VCEK in the bundle).
func attestSNP(t *testing.T, v *evidence.Verifier, auth *sim.Authority, host int) (events.Verdict, *evidence.Result) {
	t.Helper()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, Host: &host})
	if err != nil {
		t.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := vm.Respond(nonce)
	if err != nil {
		t.Fatal(err)
	}
	verdict, res, err := appraise.Evidence(context.Background(), v, raw, evidence.Expect{Nonce: nonce, VMID: vm.VMID()}, auth.Policy(), appraise.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return verdict, res
}
