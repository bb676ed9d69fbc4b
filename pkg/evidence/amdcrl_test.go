package evidence

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify/trust"
)

// testARK is a self-signed RSA CA standing in for an ARK.
type testARK struct {
	cert *x509.Certificate
	key  *rsa.PrivateKey
}

func newTestARK(t testing.TB, cn string) *testARK {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testARK{cert, key}
}

func (a *testARK) crl(t testing.TB, alg x509.SignatureAlgorithm, next time.Time, revoked ...*big.Int) []byte {
	t.Helper()
	tmpl := &x509.RevocationList{SignatureAlgorithm: alg, Number: big.NewInt(7), ThisUpdate: time.Now().Add(-time.Hour), NextUpdate: next}
	for _, n := range revoked {
		tmpl.RevokedCertificateEntries = append(tmpl.RevokedCertificateEntries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)})
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, a.cert, a.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestParseAMDCRL(t *testing.T) {
	ark, other := newTestARK(t, "ARK-Milan"), newTestARK(t, "ARK-Milan")
	now := time.Now()
	next := now.Add(7 * 24 * time.Hour)
	ask := big.NewInt(0x10001)
	for _, tc := range []struct {
		name    string
		der     []byte
		ark     *x509.Certificate
		wantErr string
		revoked int
	}{
		{name: "valid", der: ark.crl(t, x509.SHA384WithRSAPSS, next, ask), ark: ark.cert, revoked: 1},
		{name: "empty", der: ark.crl(t, x509.SHA384WithRSAPSS, next), ark: ark.cert},
		{name: "another key", der: other.crl(t, x509.SHA384WithRSAPSS, next), ark: ark.cert, wantErr: "not signed by the pinned ARK"},
		{name: "PKCS#1 v1.5", der: ark.crl(t, x509.SHA384WithRSA, next), ark: ark.cert, wantErr: "signed with SHA384-RSA"},
		{name: "expired", der: ark.crl(t, x509.SHA384WithRSAPSS, now.Add(-time.Second)), ark: ark.cert, wantErr: "expired"},
		{name: "not a CRL", der: []byte("garbage"), ark: ark.cert, wantErr: "CRL: x509"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := parseAMDCRL(tc.der, tc.ark, now)
			if tc.wantErr != "" {
				if c.err == nil || !strings.Contains(c.err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", c.err, tc.wantErr)
				}
				if !c.until.Equal(now.Add(kdsCRLRetry)) {
					t.Fatalf("invalid CRL kept until %v", c.until)
				}
				return
			}
			if c.err != nil {
				t.Fatal(c.err)
			}
			if !c.until.Equal(next.Truncate(time.Second)) {
				t.Fatalf("until %v, want nextUpdate %v", c.until, next)
			}
			if _, ok := c.revoked[serialKey(ask)]; ok != (tc.revoked > 0) || len(c.revoked) != tc.revoked {
				t.Fatalf("revoked %v, want %d entries", c.revoked, tc.revoked)
			}
		})
	}
}

// TestPinnedARKsCheckCRLs makes sure AMD's pinned ARKs are acceptable CRL
// issuers (CA, cRLSign), so that a CRL of another signer fails on its
// signature, not on the issuer's constraints.
func TestPinnedARKsCheckCRLs(t *testing.T) {
	other := newTestARK(t, "ARK-Milan")
	der := other.crl(t, x509.SHA384WithRSAPSS, time.Now().Add(time.Hour))
	for _, pl := range AMDProductLines() {
		r, err := trust.GetDefaultRootCerts(pl)
		if err != nil {
			t.Fatal(err)
		}
		c := parseAMDCRL(der, r.ProductCerts.Ark, time.Now())
		var cv x509.ConstraintViolationError
		if c.err == nil || errors.As(c.err, &cv) || !errors.Is(c.err, rsa.ErrVerification) {
			t.Fatalf("%s: %v, want an RSA verification error", pl, c.err)
		}
	}
}

// TestFixturesSNPRevocationOffline: with SNPRevocation on and nothing
// cached, the real SNP fixture cannot be decided (the CRL is unavailable),
// which is not a failure; the TDX fixture is unaffected.
func TestFixturesSNPRevocationOffline(t *testing.T) {
	v, err := NewVerifier(Config{Offline: true, SNPRevocation: true})
	if err != nil {
		t.Fatal(err)
	}
	exp := Expect{Nonce: []byte("challenge"), Binding: BindRawNonce}
	raw, _ := loadFixture(t, "snp-milan-a.bundle.json")
	res, err := v.Verify(context.Background(), raw, exp)
	if err != nil {
		t.Fatal(err)
	}
	if res.Genuine || !res.Unavailable || len(res.Failures) != 1 || res.Failures[0].Code != ReasonSNPCRLUnavailable {
		t.Fatalf("SNP: genuine %v unavailable %v failures %v", res.Genuine, res.Unavailable, res.Failures)
	}
	raw, _ = loadFixture(t, "tdx-a.bundle.json")
	if res, err := v.Verify(context.Background(), raw, Expect{Nonce: []byte("challenge"), Binding: BindRawNonce}); err != nil || !res.Genuine {
		t.Fatalf("TDX: %v %v", err, res.Failures)
	}
}

func FuzzParseAMDCRL(f *testing.F) {
	ark := newTestARK(f, "ARK-Milan")
	f.Add(ark.crl(f, x509.SHA384WithRSAPSS, time.Now().Add(time.Hour), big.NewInt(0x10001), big.NewInt(42)))
	f.Add(ark.crl(f, x509.SHA384WithRSA, time.Now().Add(time.Hour)))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	now := time.Now()
	f.Fuzz(func(t *testing.T, der []byte) {
		c := parseAMDCRL(der, ark.cert, now)
		if c.err == nil && (c.revoked == nil || !c.until.After(now)) {
			t.Fatalf("valid CRL with revoked %v until %v", c.revoked, c.until)
		}
		if c.err != nil && c.revoked != nil {
			t.Fatal("invalid CRL with revoked serials")
		}
	})
}
