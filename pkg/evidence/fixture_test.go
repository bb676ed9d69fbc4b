package evidence

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/evidence/tdx"
)

const fixtureVMIDSNP = "26F8BC30-774E-4290-8E7A-535F3B672AEE"
const fixtureVMIDTDX = "6332533D-5649-4D02-8AA7-8F64B7C3EE21"

func loadFixture(t testing.TB, name string) ([]byte, *Bundle) {
	t.Helper()
	raw, err := os.ReadFile("testdata/azure/" + name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseBundle(raw)
	if err != nil {
		t.Fatalf("ParseBundle(%s): %v", name, err)
	}
	return raw, b
}

func offlineVerifier(t testing.TB) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestFixturesGenuineOffline(t *testing.T) {
	v := offlineVerifier(t)
	for _, tc := range []struct {
		file, platform, vmid, product string
	}{
		{"snp-milan-a.bundle.json", PlatformAzureSNP, fixtureVMIDSNP, "Milan"},
		{"tdx-a.bundle.json", PlatformAzureTDX, fixtureVMIDTDX, "TDX"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			raw, _ := loadFixture(t, tc.file)
			for _, exp := range []Expect{{Binding: BindRawNonce}, {Nonce: []byte("challenge"), Binding: BindRawNonce}, {Binding: BindAny}} {
				res, err := v.Verify(context.Background(), raw, exp)
				if err != nil {
					t.Fatal(err)
				}
				if !res.Genuine || len(res.Failures) != 0 {
					t.Fatalf("not genuine: %v", res.Failures)
				}
				if res.Platform != tc.platform || res.VMUniqueID != tc.vmid || res.TCB.Product != tc.product {
					t.Fatalf("claims: platform %s vmid %s product %s", res.Platform, res.VMUniqueID, res.TCB.Product)
				}
				if len(res.PCRs) != 24 {
					t.Fatalf("%d PCRs", len(res.PCRs))
				}
			}
		})
	}
}

// region names bytes of a bundle that a single changed byte must break.
type region struct {
	name string
	// bytes returns the decoded bundle bytes to mutate, and the index range.
	bytes  func(b *Bundle) []byte
	lo, hi func(b *Bundle) int
	// want is the reason code (or code prefix ending in ".") that must be
	// the first failure.
	want string
}

func whole(b *Bundle) int { return 0 }

func TestFixtureTamper(t *testing.T) {
	hclBytes := func(b *Bundle) []byte { return b.HCLReport }
	rtLo := func(b *Bundle) int { return hcl.RuntimeDataStart }
	rtHi := func(b *Bundle) int {
		r, err := hcl.Parse(b.HCLReport)
		if err != nil {
			panic(err)
		}
		return hcl.RuntimeDataStart + len(r.RuntimeData)
	}
	at := func(n int) func(*Bundle) int { return func(*Bundle) int { return n } }
	attest := func(b *Bundle) []byte { return b.TPMQuote.Attest }
	sig := func(b *Bundle) []byte { return b.TPMQuote.Signature }
	nonce := func(b *Bundle) []byte { return b.Nonce }
	tdq := func(b *Bundle) []byte { return b.TDQuote }
	end := func(get func(*Bundle) []byte) func(*Bundle) int { return func(b *Bundle) int { return len(get(b)) } }
	common := []region{
		{"runtime data", hclBytes, rtLo, rtHi, ReasonBindingMismatch},
		{"TPM attest", attest, whole, end(attest), "tpm."},
		{"TPM signature", sig, whole, end(sig), ReasonTPMSignatureInvalid},
		{"nonce", nonce, whole, end(nonce), ReasonTPMNonceMismatch},
	}
	for i := range 24 {
		pcr := func(b *Bundle) []byte { return b.TPMQuote.PCRs[i] }
		common = append(common, region{"PCR " + string(rune('0'+i/10)) + string(rune('0'+i%10)), pcr, whole, end(pcr), ReasonTPMPCRDigestMismatch})
	}
	const hw = hcl.HeaderSize
	snp := append([]region{
		{"SNP report signed part", hclBytes, at(hw), at(hw + 0x2A0), "snp."},
		{"SNP report signature", hclBytes, at(hw + 0x2A0), at(hw + 0x4A0), "snp."},
	}, common...)
	tdxRegions := append([]region{
		{"TD quote", tdq, whole, end(tdq), "tdx."},
		{"TD report hashes and report data", hclBytes, at(hw + 32), at(hw + 192), ReasonTDXTDReportMismatch},
		{"TD report TEE_TCB_INFO", hclBytes, at(hw + 256), at(hw + 256 + 239), ReasonTDXTDReportMismatch},
		{"TD report TDINFO", hclBytes, at(hw + 512), at(hw + tdx.TDReportSize), ReasonTDXTDReportMismatch},
	}, common...)

	for _, fx := range []struct {
		file    string
		regions []region
	}{
		{"snp-milan-a.bundle.json", snp},
		{"tdx-a.bundle.json", tdxRegions},
	} {
		for _, withNonce := range []bool{false, true} {
			v := offlineVerifier(t)
			_, b := loadFixture(t, fx.file)
			exp := Expect{Binding: BindRawNonce} // Azure's samples quote the raw nonce
			if withNonce {
				exp.Nonce = []byte("challenge")
			}
			for _, rg := range fx.regions {
				if !withNonce && rg.name != "nonce" {
					continue // only the nonce check depends on an issued nonce
				}
				name := fx.file + "/" + rg.name
				if withNonce {
					name += "/issued-nonce"
				}
				t.Run(name, func(t *testing.T) {
					seen := map[string]int{}
					defer func() { t.Logf("first failures: %v", seen) }()
					buf := rg.bytes(b)
					lo, hi := rg.lo(b), rg.hi(b)
					if lo >= hi || hi > len(buf) {
						t.Fatalf("bad region %d..%d of %d", lo, hi, len(buf))
					}
					for i := lo; i < hi; i++ {
						flip := byte(1) << (i % 8)
						buf[i] ^= flip
						res := v.VerifyBundle(context.Background(), b, exp)
						buf[i] ^= flip
						if res.Genuine || len(res.Failures) == 0 {
							t.Fatalf("byte %d flipped (0x%02x): still genuine", i, flip)
						}
						got := res.Failures[0].Code
						seen[got]++
						ok := got == rg.want || (strings.HasSuffix(rg.want, ".") && strings.HasPrefix(got, rg.want))
						if !ok {
							t.Fatalf("byte %d flipped: first failure %s (%s), want %s; all %v", i, got, res.Failures[0].Message, rg.want, res.Failures)
						}
					}
					if res := v.VerifyBundle(context.Background(), b, exp); !res.Genuine {
						t.Fatalf("restored bundle not genuine: %v", res.Failures)
					}
				})
			}
		}
	}
}
