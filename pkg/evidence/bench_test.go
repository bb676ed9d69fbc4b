package evidence_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/pem"
	"math/big"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/evidence/tdx"
)

func BenchmarkVerifySNP(b *testing.B) { benchmarkVerify(b, evidence.PlatformAzureSNP, false) }
func BenchmarkVerifyTDX(b *testing.B) { benchmarkVerify(b, evidence.PlatformAzureTDX, false) }

// BenchmarkVerifySNPRevocation is BenchmarkVerifySNP with
// Config.SNPRevocation (the CRL fetched once from the simulated KDS).
func BenchmarkVerifySNPRevocation(b *testing.B) {
	benchmarkVerify(b, evidence.PlatformAzureSNP, true)
}

// benchmarkVerify measures steady-state verification of one simulated
// bundle (chains cached) and, in the same run, the bare signature
// verifications that bundle needs, reporting their ratio as x-bare.
func benchmarkVerify(b *testing.B, platform string, snpRevocation bool) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		b.Fatal(err)
	}
	cfg := evidence.Config{TestRoots: auth.TrustRoots(), Offline: true}
	if snpRevocation {
		kds := httptest.NewServer(auth.KDS())
		defer kds.Close()
		cfg.Offline, cfg.KDSURL, cfg.SNPRevocation = false, kds.URL, true
	}
	vm, err := auth.NewVM(sim.VMConfig{Platform: platform, AK: sim.AKRSA2048})
	if err != nil {
		b.Fatal(err)
	}
	nonce := evidence.NewNonce()
	raw, err := vm.Respond(nonce)
	if err != nil {
		b.Fatal(err)
	}
	v, err := evidence.NewVerifier(cfg)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	exp := evidence.Expect{Nonce: nonce}
	if res, err := v.Verify(ctx, raw, exp); err != nil || !res.Genuine {
		b.Fatalf("warm-up: %v %v", err, res.Failures)
	}
	bare := bareVerifications(b, raw)

	b.ReportAllocs()
	b.ResetTimer()
	// Verification and the bare signature checks alternate, each timed on
	// its own, so machine load affects both alike.
	var verifyDur, bareDur time.Duration
	for range b.N {
		t0 := time.Now()
		res, err := v.Verify(ctx, raw, exp)
		t1 := time.Now()
		ok := bare()
		t2 := time.Now()
		if err != nil || !res.Genuine || !ok {
			b.Fatal("verification failed")
		}
		verifyDur += t1.Sub(t0)
		bareDur += t2.Sub(t1)
	}
	b.StopTimer()
	verifyNs := float64(verifyDur.Nanoseconds()) / float64(b.N)
	bareNs := float64(bareDur.Nanoseconds()) / float64(b.N)
	b.ReportMetric(verifyNs, "verify-ns/op")
	b.ReportMetric(bareNs, "bare-ns/op")
	b.ReportMetric(verifyNs/bareNs, "x-bare")
}

// bareVerifications returns a function doing only the signature checks the
// bundle's chain needs, with keys parsed beforehand: the hardware report
// (SNP: VCEK over the report; TDX: attestation key over the quote and PCK
// over the QE report) and the AK over the TPM quote.
func bareVerifications(b *testing.B, raw []byte) func() bool {
	bundle, err := evidence.ParseBundle(raw)
	if err != nil {
		b.Fatal(err)
	}
	rep, err := hcl.Parse(bundle.HCLReport)
	if err != nil {
		b.Fatal(err)
	}
	rt, err := hcl.ParseRuntimeData(rep.RuntimeData)
	if err != nil {
		b.Fatal(err)
	}
	akPub, err := rt.Key(hcl.KidAK)
	if err != nil {
		b.Fatal(err)
	}
	ak := akPub.(*rsa.PublicKey)
	attest, sig := bundle.TPMQuote.Attest, bundle.TPMQuote.Signature
	tpmOK := func() bool {
		d := sha256.Sum256(attest)
		return rsa.VerifyPKCS1v15(ak, crypto.SHA256, d[:], sig) == nil
	}
	rs := func(b []byte) (*big.Int, *big.Int) {
		return new(big.Int).SetBytes(b[:len(b)/2]), new(big.Int).SetBytes(b[len(b)/2:])
	}
	if bundle.Platform == evidence.PlatformAzureSNP {
		blk, _ := pem.Decode(bundle.VCEK)
		vcek, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		pub := vcek.PublicKey.(*ecdsa.PublicKey)
		report := rep.Hardware
		der, err := abi.ReportToSignatureDER(report)
		if err != nil {
			b.Fatal(err)
		}
		return func() bool {
			d := sha512.Sum384(abi.SignedComponent(report))
			return ecdsa.VerifyASN1(pub, d[:], der) && tpmOK()
		}
	}
	q, err := tdx.ParseQuote(bundle.TDQuote)
	if err != nil {
		b.Fatal(err)
	}
	chain, err := tdx.ParsePCKChain(q.PCKChain)
	if err != nil {
		b.Fatal(err)
	}
	pck := chain.PCK.PublicKey.(*ecdsa.PublicKey)
	att, err := ecdsa.ParseUncompressedPublicKey(pck.Curve, append([]byte{4}, q.AttestationKey...))
	if err != nil {
		b.Fatal(err)
	}
	qr, qs := rs(q.Signature)
	er, es := rs(q.QEReportSignature)
	return func() bool {
		d := sha256.Sum256(q.Signed())
		e := sha256.Sum256(q.QEReport)
		return ecdsa.Verify(att, d[:], qr, qs) && ecdsa.Verify(pck, e[:], er, es) && tpmOK()
	}
}
