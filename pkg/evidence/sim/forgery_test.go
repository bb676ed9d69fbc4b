package sim_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// recordingCache is a collateral cache that records the keys stored.
type recordingCache struct {
	collateral.Cache
	mu   sync.Mutex
	puts []string
}

func (c *recordingCache) Put(ctx context.Context, key string, value []byte, expires time.Time) error {
	c.mu.Lock()
	c.puts = append(c.puts, key)
	c.mu.Unlock()
	return c.Cache.Put(ctx, key, value, expires)
}

func (c *recordingCache) stored() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.puts)
}

// pcsAnswer is an Intel PCS answer a test may forge.
type pcsAnswer struct {
	hdr  http.Header
	body []byte
}

// tamperPCS serves h, letting forge rewrite the answer to requests whose
// path ends in suffix.
func tamperPCS(h http.Handler, suffix string, forge func(t *testing.T, a *pcsAnswer), t *testing.T) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, suffix) {
			h.ServeHTTP(w, r)
			return
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, r)
		a := &pcsAnswer{hdr: rec.Header(), body: rec.Body.Bytes()}
		forge(t, a)
		for k, v := range a.hdr {
			w.Header()[k] = v
		}
		_, _ = w.Write(a.body)
	})
}

var nextUpdateRE = regexp.MustCompile(`"nextUpdate":"[^"]*"`)

// farNextUpdate moves a signed PCS document's nextUpdate years ahead
// without signing it again.
func farNextUpdate(t *testing.T, a *pcsAnswer) {
	if !nextUpdateRE.Match(a.body) {
		t.Error("no nextUpdate in the PCS answer")
	}
	a.body = nextUpdateRE.ReplaceAll(a.body, []byte(`"nextUpdate":"2099-01-01T00:00:00Z"`))
}

// selfSigned signs a PCS JSON document again, with a far nextUpdate, by an
// "Intel SGX TCB Signing" certificate of a self-made root named like
// Intel's, and names that chain in the issuer chain header.
func selfSigned(header string) func(t *testing.T, a *pcsAnswer) {
	return func(t *testing.T, a *pcsAnswer) {
		var doc map[string]json.RawMessage
		if err := json.Unmarshal(a.body, &doc); err != nil {
			t.Fatal(err)
		}
		member := ""
		for k := range doc {
			if k != "signature" {
				member = k
			}
		}
		signed := nextUpdateRE.ReplaceAll(doc[member], []byte(`"nextUpdate":"2099-01-01T00:00:00Z"`))
		rootKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		signKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		root := makeCert(t, "Intel SGX Root CA", true, rootKey, nil, rootKey)
		signer := makeCert(t, "Intel SGX TCB Signing", false, signKey, root, rootKey)
		d := sha256.Sum256(signed)
		r, s, err := ecdsa.Sign(rand.Reader, signKey, d[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		a.body = fmt.Appendf(nil, `{"%s":%s,"signature":"%s"}`, member, signed, hex.EncodeToString(sig))
		var chain bytes.Buffer
		for _, c := range []*x509.Certificate{signer, root} {
			_ = pem.Encode(&chain, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		a.hdr.Set(header, url.QueryEscape(chain.String()))
	}
}

// foreignCRL replaces the PCK CRL by one naming the PCK platform CA as its
// issuer but signed by another key.
func foreignCRL(t *testing.T, a *pcsAnswer) {
	chain, err := url.QueryUnescape(a.hdr.Get("SGX-PCK-CRL-Issuer-Chain"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(chain))
	if blk == nil {
		t.Fatal("no PCK CRL issuer chain")
	}
	ca, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	fake := makeCert(t, ca.Subject.CommonName, true, key, nil, key)
	fake.RawSubject = ca.RawSubject
	now := time.Now()
	a.body, err = x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(1), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.AddDate(50, 0, 0),
	}, fake, key)
	if err != nil {
		t.Fatal(err)
	}
}

// makeCert makes a certificate for key, issued by parent (nil:
// self-signed) with parentKey.
func makeCert(t *testing.T, cn string, ca bool, key *ecdsa.PrivateKey, parent *x509.Certificate, parentKey *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(10, 0, 0),
		BasicConstraintsValid: true, IsCA: ca,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	if parent == nil {
		parent = tmpl
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestForgedPCSCollateralNotCached: Intel PCS answers that do not verify
// (changed after signing, signed under a self-made root, a CRL of another
// key) fail the evidence and are never stored in the collateral cache, so a
// verifier sharing it offline does not find them.
func TestForgedPCSCollateralNotCached(t *testing.T) {
	for _, tc := range []struct {
		name, path string
		forge      func(t *testing.T, a *pcsAnswer)
		// stored is how many documents reach the cache (TCB info, QE
		// identity and PCK CRL are obtained in this order).
		stored int
		wantIn string
	}{
		{name: "healthy", stored: 3},
		{name: "TCB info nextUpdate changed", path: "/tcb", forge: farNextUpdate, wantIn: "TCB info: signature invalid"},
		{name: "TCB info under a self-made root", path: "/tcb", forge: selfSigned("TCB-Info-Issuer-Chain"), wantIn: "not end in a trusted Intel root"},
		{name: "QE identity nextUpdate changed", path: "/qe/identity", forge: farNextUpdate, stored: 1, wantIn: "QE identity: signature invalid"},
		{name: "QE identity under a self-made root", path: "/qe/identity", forge: selfSigned("SGX-Enclave-Identity-Issuer-Chain"), stored: 1, wantIn: "not end in a trusted Intel root"},
		{name: "PCK CRL of another key", path: "/pckcrl", forge: foreignCRL, stored: 2, wantIn: "PCK CRL signature"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
			if err != nil {
				t.Fatal(err)
			}
			var h = auth.PCS()
			if tc.forge != nil {
				h = tamperPCS(h, tc.path, tc.forge, t)
			}
			pcs := httptest.NewServer(h)
			defer pcs.Close()
			cache := &recordingCache{Cache: collateral.NewMemory(0)}
			on, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), PCSURL: pcs.URL, TDXCollateral: true, Collateral: cache})
			if err != nil {
				t.Fatal(err)
			}
			// Cache keys name the PCS URL: the offline verifier names the same.
			off, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), PCSURL: pcs.URL, Offline: true, TDXCollateral: true, Collateral: cache})
			if err != nil {
				t.Fatal(err)
			}
			res := verifyTDX(t, on, auth)
			if tc.forge == nil {
				if !res.Genuine || res.TDX.TCBStatus != "UpToDate" {
					t.Fatalf("online: %v", res.Failures)
				}
			} else if res.Genuine || res.Unavailable || res.Failures[0].Code != evidence.ReasonTDXCollateralInvalid || !strings.Contains(res.Failures[0].Message, tc.wantIn) {
				t.Fatalf("online: unavailable %v failures %v, want %s (%q)", res.Unavailable, res.Failures, evidence.ReasonTDXCollateralInvalid, tc.wantIn)
			}
			if n := cache.stored(); n != tc.stored {
				t.Fatalf("%d documents stored in the collateral cache, want %d", n, tc.stored)
			}
			res = verifyTDX(t, off, auth)
			if tc.forge == nil {
				if !res.Genuine {
					t.Fatalf("offline from the cache: %v", res.Failures)
				}
			} else if !res.Unavailable || res.Failures[0].Code != evidence.ReasonTDXCollateralUnavailable {
				t.Fatalf("offline: unavailable %v failures %v, want %s", res.Unavailable, res.Failures, evidence.ReasonTDXCollateralUnavailable)
			}
		})
	}
}

// verifyTDX verifies evidence of a fresh TDX VM on host 0.
func verifyTDX(t *testing.T, v *evidence.Verifier, auth *sim.Authority) *evidence.Result {
	t.Helper()
	host := 0
	vm, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256, Host: &host})
	if err != nil {
		t.Fatal(err)
	}
	return mustVerifyFresh(context.Background(), t, v, vm)
}

// TestForgedVCEKNotCached: a VCEK from AMD KDS that does not chain to the
// pinned ARK, or is another chip's, fails the evidence and is never stored
// in the collateral cache.
func TestForgedVCEKNotCached(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 2})
	if err != nil {
		t.Fatal(err)
	}
	otherChip := bundleVCEK(t, auth, 1)
	// A copy of host 0's VCEK (same subject, serial and AMD extensions)
	// signed by a key of its own.
	genuine, err := x509.ParseCertificate(bundleVCEK(t, auth, 0))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	selfMade, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: genuine.SerialNumber, Subject: genuine.Subject, Issuer: genuine.Issuer,
		NotBefore: genuine.NotBefore, NotAfter: genuine.NotAfter, ExtraExtensions: genuine.Extensions,
	}, &x509.Certificate{SerialNumber: big.NewInt(1), Subject: genuine.Issuer}, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		vcek   []byte // nil: the genuine one
		wantIn string
	}{
		{name: "genuine"},
		{name: "another chip's", vcek: otherChip, wantIn: "is not the report's chip ID"},
		{name: "self-made", vcek: selfMade, wantIn: "does not chain to a trusted Milan ARK"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kdsH := auth.KDS()
			kds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if tc.vcek == nil {
					kdsH.ServeHTTP(w, r)
					return
				}
				_, _ = w.Write(tc.vcek)
			}))
			defer kds.Close()
			cache := &recordingCache{Cache: collateral.NewMemory(0)}
			on, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: kds.URL, Collateral: cache})
			if err != nil {
				t.Fatal(err)
			}
			off, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true, Collateral: cache})
			if err != nil {
				t.Fatal(err)
			}
			host0 := 0
			vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, Host: &host0, OmitVCEK: true})
			if err != nil {
				t.Fatal(err)
			}
			verify := func(v *evidence.Verifier) *evidence.Result {
				return mustVerifyFresh(context.Background(), t, v, vm)
			}
			res := verify(on)
			if tc.vcek == nil {
				if !res.Genuine || cache.stored() != 1 {
					t.Fatalf("genuine VCEK: %v, %d stored", res.Failures, cache.stored())
				}
				if res := verify(off); !res.Genuine {
					t.Fatalf("offline from the cache: %v", res.Failures)
				}
				return
			}
			if res.Genuine || res.Unavailable || res.Failures[0].Code != evidence.ReasonSNPVCEKInvalid || !strings.Contains(res.Failures[0].Message, tc.wantIn) {
				t.Fatalf("unavailable %v failures %v, want %s (%q)", res.Unavailable, res.Failures, evidence.ReasonSNPVCEKInvalid, tc.wantIn)
			}
			if n := cache.stored(); n != 0 {
				t.Fatalf("%d VCEKs stored, want none", n)
			}
			if res := verify(off); !res.Unavailable || res.Failures[0].Code != evidence.ReasonSNPVCEKUnavailable {
				t.Fatalf("offline: unavailable %v failures %v", res.Unavailable, res.Failures)
			}
		})
	}
}

// bundleVCEK returns the DER VCEK in the bundle of a VM on host.
func bundleVCEK(t *testing.T, auth *sim.Authority, host int) []byte {
	t.Helper()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, Host: &host})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := vm.Respond(evidence.NewNonce())
	if err != nil {
		t.Fatal(err)
	}
	b, err := evidence.ParseBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	for rest := b.VCEK; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if c, err := x509.ParseCertificate(blk.Bytes); err == nil && c.Subject.CommonName == "SEV-VCEK" {
			return c.Raw
		}
	}
	t.Fatalf("no VCEK in the bundle of host %d", host)
	return nil
}

// TestPoisonedCollateralReplaced: collateral in the cache that does not
// verify (written there by an older version or by other means) fails
// verification while no fresh copy can be had, and is replaced by the
// fetched one as soon as it can.
func TestPoisonedCollateralReplaced(t *testing.T) {
	for _, tc := range []struct {
		name     string
		platform string
		stored   int
		invalid  string
	}{
		{name: "SEV-SNP VCEK and CRL", platform: evidence.PlatformAzureSNP, stored: 2, invalid: evidence.ReasonSNPVCEKInvalid},
		{name: "TDX PCS collateral", platform: evidence.PlatformAzureTDX, stored: 3, invalid: evidence.ReasonTDXCollateralInvalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
			if err != nil {
				t.Fatal(err)
			}
			var hits atomic.Int64
			h := auth.KDS()
			if tc.platform == evidence.PlatformAzureTDX {
				h = auth.PCS()
			}
			srv := httptest.NewServer(counting(h, &hits))
			defer srv.Close()
			mem := collateral.NewMemory(0)
			cache := &recordingCache{Cache: mem}
			cfg := evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: srv.URL, PCSURL: srv.URL, SNPRevocation: true, TDXCollateral: true}
			verifier := func(offline bool) *evidence.Verifier {
				c := cfg
				c.Offline, c.Collateral = offline, cache
				v, err := evidence.NewVerifier(c)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			vm, err := auth.NewVM(sim.VMConfig{Platform: tc.platform, AK: sim.AKECDSAP256, OmitVCEK: true})
			if err != nil {
				t.Fatal(err)
			}
			verify := func(v *evidence.Verifier) *evidence.Result {
				t.Helper()
				return mustVerifyFresh(context.Background(), t, v, vm)
			}
			if res := verify(verifier(false)); !res.Genuine || cache.stored() != tc.stored {
				t.Fatalf("healthy: %v, %d stored", res.Failures, cache.stored())
			}
			// Poison every stored value: a byte of its signature changed.
			ctx := context.Background()
			cache.mu.Lock()
			keys := append([]string(nil), cache.puts...)
			cache.puts = nil
			cache.mu.Unlock()
			for _, k := range keys {
				val, err := mem.Get(ctx, k)
				if err != nil {
					t.Fatal(err)
				}
				var cr struct {
					Header http.Header `json:"header"`
					Body   []byte      `json:"body"`
				}
				if json.Unmarshal(val, &cr) == nil && cr.Body != nil {
					cr.Body[len(cr.Body)-10] ^= 1
					val, _ = json.Marshal(cr)
				} else {
					val[len(val)-10] ^= 1
				}
				if err := mem.Put(ctx, k, val, time.Now().AddDate(50, 0, 0)); err != nil {
					t.Fatal(err)
				}
			}
			// Offline: the poisoned copies are all there is.
			if res := verify(verifier(true)); res.Genuine || res.Unavailable || res.Failures[0].Code != tc.invalid {
				t.Fatalf("offline, poisoned: unavailable %v failures %v, want %s", res.Unavailable, res.Failures, tc.invalid)
			}
			// Online: fetched again, verified, and stored in their place.
			before := hits.Load()
			if res := verify(verifier(false)); !res.Genuine {
				t.Fatalf("online, poisoned: %v", res.Failures)
			}
			if n := hits.Load() - before; n != int64(tc.stored) || cache.stored() != tc.stored {
				t.Fatalf("%d fetched and %d stored again, want %d", n, cache.stored(), tc.stored)
			}
			if res := verify(verifier(true)); !res.Genuine {
				t.Fatalf("offline, replaced: %v", res.Failures)
			}
		})
	}
}

// TestPCSConcurrentFirstUse: verifications racing for PCS collateral not
// yet held share one fetch per document; each verifies the answer, genuine
// or forged, and a forged one is not stored.
func TestPCSConcurrentFirstUse(t *testing.T) {
	for _, tc := range []struct {
		name   string
		forge  func(t *testing.T, a *pcsAnswer)
		stored int
	}{
		{name: "genuine", stored: 3},
		{name: "forged TCB info", forge: farNextUpdate},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
			if err != nil {
				t.Fatal(err)
			}
			h := auth.PCS()
			if tc.forge != nil {
				h = tamperPCS(h, "/tcb", tc.forge, t)
			}
			var hits atomic.Int64
			release := make(chan struct{})
			pcs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				<-release // hold the fetch until every verification waits for it
				h.ServeHTTP(w, r)
			}))
			defer pcs.Close()
			cache := &recordingCache{Cache: collateral.NewMemory(0)}
			v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), PCSURL: pcs.URL, TDXCollateral: true, Collateral: cache})
			if err != nil {
				t.Fatal(err)
			}
			const n = 8
			host := 0
			vm, err := auth.NewVM(sim.VMConfig{Platform: evidence.PlatformAzureTDX, AK: sim.AKECDSAP256, Host: &host})
			if err != nil {
				t.Fatal(err)
			}
			type outcome struct {
				res *evidence.Result
				err error
			}
			results := make(chan outcome, n)
			for range n {
				nonce := evidence.NewNonce()
				raw, err := vm.Respond(nonce)
				if err != nil {
					t.Fatal(err)
				}
				go func() {
					res, err := v.Verify(context.Background(), raw, evidence.Expect{Nonce: nonce})
					results <- outcome{res, err}
				}()
			}
			time.Sleep(200 * time.Millisecond)
			close(release)
			for range n {
				o := <-results
				if o.err != nil {
					t.Fatal(o.err)
				}
				res := o.res
				if tc.forge == nil && !res.Genuine {
					t.Fatalf("genuine collateral: %v", res.Failures)
				}
				if tc.forge != nil && (res.Genuine || res.Unavailable || res.Failures[0].Code != evidence.ReasonTDXCollateralInvalid) {
					t.Fatalf("forged collateral: unavailable %v failures %v", res.Unavailable, res.Failures)
				}
			}
			if want := int64(max(tc.stored, 1)); hits.Load() != want {
				t.Fatalf("PCS asked %d times, want %d", hits.Load(), want)
			}
			if cache.stored() != tc.stored {
				t.Fatalf("%d documents stored, want %d", cache.stored(), tc.stored)
			}
		})
	}
}
