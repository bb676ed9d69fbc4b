package appraise

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/evidence"
)

func TestVerdictJWS(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := &VerdictSigner{Key: key, KeyID: "verifier-1"}
	v, err := Result(genuineSNP(), nil, DefaultPolicy(), evidence.Expect{}, Options{Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(v.JWS, ".") != 2 {
		t.Fatalf("JWS %q", v.JWS)
	}
	got, err := VerifyVerdictJWS(v.JWS, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != v.ID || got.Status != v.Status || got.VMID != v.VMID || !got.IssuedAt.Equal(v.IssuedAt) {
		t.Fatalf("verified verdict %+v, signed %+v", got, v)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := VerifyVerdictJWS(v.JWS, &other.PublicKey); err == nil {
		t.Fatal("JWS verified with another key")
	}
	parts := strings.Split(v.JWS, ".")
	forged := parts[0] + "." + strings.Replace(parts[1], parts[1][10:12], "AA", 1) + "." + parts[2]
	if forged != v.JWS {
		if _, err := VerifyVerdictJWS(forged, &key.PublicKey); err == nil {
			t.Fatal("changed payload verified")
		}
	}
	for _, bad := range []string{"", "a.b", "a.b.c", parts[0] + "." + parts[1] + ".AAAA"} {
		if _, err := VerifyVerdictJWS(bad, &key.PublicKey); err == nil {
			t.Fatalf("JWS %q verified", bad)
		}
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := (&VerdictSigner{Key: p384}).Sign(&v); err == nil {
		t.Fatal("P-384 key accepted for ES256")
	}
}
