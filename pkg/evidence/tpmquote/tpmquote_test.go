package tpmquote

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func pcrValues(n int) map[int][]byte {
	m := make(map[int][]byte, n)
	for i := range n {
		d := sha256.Sum256([]byte{byte(i)})
		m[i] = d[:]
	}
	return m
}

func TestBuildSignVerify(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		bare bool
	}{
		{"RSA TPMT_SIGNATURE", rk, false},
		{"RSA bare", rk, true},
		{"ECDSA TPMT_SIGNATURE", ek, false},
		{"ECDSA bare", ek, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pcrs := pcrValues(24)
			attest, err := Build(Params{ExtraData: []byte("nonce"), PCRs: pcrs, QualifiedSigner: []byte{0, 11, 1, 2}})
			if err != nil {
				t.Fatal(err)
			}
			sig, err := Sign(attest, tc.key, tc.bare)
			if err != nil {
				t.Fatal(err)
			}
			q, err := Parse(attest, sig)
			if err != nil {
				t.Fatal(err)
			}
			if q.Signature.Bare != tc.bare {
				t.Fatalf("bare = %v", q.Signature.Bare)
			}
			if err := q.VerifySignature(tc.key.Public()); err != nil {
				t.Fatal(err)
			}
			if err := q.CheckExtraData([]byte("nonce")); err != nil {
				t.Fatal(err)
			}
			if err := q.CheckExtraData([]byte("nonc3")); !errors.Is(err, ErrExtraData) {
				t.Fatalf("wrong extraData: %v", err)
			}
			if err := q.CheckPCRs(tpm2.TPMAlgSHA256, pcrs); err != nil {
				t.Fatal(err)
			}
			other := pcrValues(24)
			other[7] = bytes.Repeat([]byte{1}, 32)
			if err := q.CheckPCRs(tpm2.TPMAlgSHA256, other); !errors.Is(err, ErrPCRDigest) {
				t.Fatalf("changed PCR: %v", err)
			}
			delete(other, 7)
			if err := q.CheckPCRs(tpm2.TPMAlgSHA256, other); !errors.Is(err, ErrPCRSelection) {
				t.Fatalf("missing PCR: %v", err)
			}
			if err := q.CheckPCRs(tpm2.TPMAlgSHA1, pcrs); !errors.Is(err, ErrPCRSelection) {
				t.Fatalf("wrong bank: %v", err)
			}
			// The other key type and a changed attest fail.
			var wrong crypto.PublicKey = ek.Public()
			if tc.key == crypto.Signer(ek) {
				wrong = rk.Public()
			}
			if err := q.VerifySignature(wrong); !errors.Is(err, ErrSignature) {
				t.Fatalf("wrong key: %v", err)
			}
			bad := bytes.Clone(attest)
			bad[len(bad)-1] ^= 1
			if q2, err := Parse(bad, sig); err != nil || !errors.Is(q2.VerifySignature(tc.key.Public()), ErrSignature) {
				t.Fatalf("changed attest verified: %v", err)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	pcrs := pcrValues(3)
	attest, err := Build(Params{ExtraData: []byte("n"), PCRs: pcrs})
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 256)
	for _, tc := range []struct {
		name        string
		attest, sig []byte
	}{
		{"empty attest", nil, sig},
		{"empty signature", attest, nil},
		{"trailing byte", append(bytes.Clone(attest), 0), sig},
		{"truncated", attest[:len(attest)-1], sig},
		{"bad magic", append([]byte{0}, attest[1:]...), sig},
		{"not a quote", append(append(bytes.Clone(attest[:4]), 0x80, 0x17), attest[6:]...), sig},
		{"huge attest", make([]byte, MaxAttestSize+1), sig},
		{"huge signature", attest, make([]byte, MaxSignatureSize+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.attest, tc.sig); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
	if _, err := Build(Params{ExtraData: make([]byte, 65), PCRs: pcrs}); err == nil {
		t.Fatal("65-byte extraData accepted")
	}
	if _, err := Build(Params{PCRs: map[int][]byte{24: make([]byte, 32)}}); err == nil {
		t.Fatal("PCR 24 accepted")
	}
}

type fixture struct {
	Quote struct {
		Attest    string            `json:"attest"`
		Signature string            `json:"signature"`
		PCRs      map[string]string `json:"pcrs"`
	} `json:"tpm_quote"`
}

func loadFixture(t testing.TB, name string) (attest, sig []byte, pcrs map[int][]byte) {
	t.Helper()
	raw, err := os.ReadFile("../testdata/azure/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var f fixture
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	attest, _ = base64.StdEncoding.DecodeString(f.Quote.Attest)
	sig, _ = base64.StdEncoding.DecodeString(f.Quote.Signature)
	pcrs = map[int][]byte{}
	for k, v := range f.Quote.PCRs {
		i, _ := strconv.Atoi(k)
		pcrs[i], _ = hex.DecodeString(v)
	}
	return attest, sig, pcrs
}

func TestAzureFixtureQuotes(t *testing.T) {
	for _, name := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		attest, sig, pcrs := loadFixture(t, name)
		q, err := Parse(attest, sig)
		if err != nil {
			t.Fatal(err)
		}
		if !q.Signature.Bare || string(q.ExtraData) != "challenge" || len(q.Selection) != 1 || len(q.Selection[0].PCRs) != 24 {
			t.Fatalf("%s: %+v", name, q)
		}
		if err := q.CheckPCRs(tpm2.TPMAlgSHA256, pcrs); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// sameQuote compares two decodings field by field (nil and empty alike).
func sameQuote(a, b *Quote) bool {
	eq := bytes.Equal
	if a.Magic != b.Magic || !eq(a.QualifiedSigner, b.QualifiedSigner) || !eq(a.ExtraData, b.ExtraData) ||
		a.Clock != b.Clock || a.ResetCount != b.ResetCount || a.RestartCount != b.RestartCount ||
		a.Safe != b.Safe || a.FirmwareVersion != b.FirmwareVersion || !eq(a.PCRDigest, b.PCRDigest) ||
		len(a.Selection) != len(b.Selection) {
		return false
	}
	for i := range a.Selection {
		if a.Selection[i].Hash != b.Selection[i].Hash || !slices.Equal(a.Selection[i].PCRs, b.Selection[i].PCRs) {
			return false
		}
	}
	return true
}

func sameSignature(a, b Signature) bool {
	return a.Bare == b.Bare && a.Alg == b.Alg && a.Hash == b.Hash &&
		bytes.Equal(a.RSA, b.RSA) && bytes.Equal(a.R, b.R) && bytes.Equal(a.S, b.S)
}

// checkAgainstGoTPM fails when the hand-written decoder and go-tpm disagree.
func checkAgainstGoTPM(t *testing.T, attest, sig []byte) {
	t.Helper()
	mine, errMine := parseAttest(attest)
	ref, errRef := parseAttestGoTPM(attest)
	switch {
	case errMine == nil && errRef != nil:
		t.Fatalf("accepted what go-tpm rejects (%v): %x", errRef, attest)
	case errMine == nil && !sameQuote(mine, ref):
		t.Fatalf("decodings differ:\n mine %+v\n go-tpm %+v", mine, ref)
	case errMine != nil && errRef == nil:
		// Stricter on purpose only: bounded selection counts and sizes.
		ok := len(ref.Selection) > 16
		for _, s := range ref.Selection {
			ok = ok || len(s.PCRs) > 32 || slices.ContainsFunc(s.PCRs, func(i int) bool { return i >= 32 })
		}
		if !ok {
			t.Fatalf("rejected (%v) what go-tpm accepts: %x", errMine, attest)
		}
	}
	if len(sig) > 0 && !sameSignature(parseSignature(sig), parseSignatureGoTPM(sig)) {
		t.Fatalf("signature decodings differ for %x", sig)
	}
}

func TestParseMatchesGoTPM(t *testing.T) {
	for _, name := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		attest, sig, _ := loadFixture(t, name)
		checkAgainstGoTPM(t, attest, sig)
	}
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	ek, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for _, key := range []crypto.Signer{rk, ek} {
		attest, err := Build(Params{ExtraData: []byte("x"), PCRs: pcrValues(10), QualifiedSigner: []byte{0, 11}})
		if err != nil {
			t.Fatal(err)
		}
		sig, err := Sign(attest, key, false)
		if err != nil {
			t.Fatal(err)
		}
		checkAgainstGoTPM(t, attest, sig)
		for i := range attest {
			mod := bytes.Clone(attest)
			mod[i] ^= 0xff
			checkAgainstGoTPM(t, mod, nil)
		}
		for i := range sig {
			mod := bytes.Clone(sig)
			mod[i] ^= 0x01
			checkAgainstGoTPM(t, attest, mod)
		}
	}
}

func FuzzParse(f *testing.F) {
	attest, sig, _ := loadFixture(f, "snp-milan-a.bundle.json")
	f.Add(attest, sig)
	rk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	a2, _ := Build(Params{ExtraData: []byte("x"), PCRs: pcrValues(24)})
	s2, _ := Sign(a2, rk, false)
	f.Add(a2, s2)
	f.Fuzz(func(t *testing.T, attest, sig []byte) {
		checkAgainstGoTPM(t, attest, sig)
		q, err := Parse(attest, sig)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if !bytes.Equal(q.Attest, attest) {
			t.Fatal("Attest is not the input")
		}
		_ = q.VerifySignature(rk.Public())
		_ = q.CheckPCRs(tpm2.TPMAlgSHA256, pcrValues(24))
	})
}
