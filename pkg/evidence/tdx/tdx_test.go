package tdx

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
)

func fixture(t testing.TB) (quote, tdReport []byte) {
	t.Helper()
	raw, err := os.ReadFile("../testdata/azure/tdx-a.bundle.json")
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		TD  string `json:"td_quote"`
		HCL string `json:"hcl_report"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	quote, _ = base64.StdEncoding.DecodeString(b.TD)
	h, _ := base64.StdEncoding.DecodeString(b.HCL)
	return quote, h[hcl.HeaderSize : hcl.HeaderSize+TDReportSize]
}

func TestParseFixture(t *testing.T) {
	raw, report := fixture(t)
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	if q.Version != 4 || q.TEEType != TEETypeTDX || len(q.QEAuthData) != 32 {
		t.Fatalf("quote %+v", q)
	}
	c, err := ParsePCKChain(q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	if c.PCK.Subject.CommonName != "Intel SGX PCK Certificate" || c.Root.Subject.CommonName != "Intel SGX Root CA" {
		t.Fatalf("chain %s / %s", c.PCK.Subject, c.Root.Subject)
	}
	r, err := ParseTDReport(report)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Match(q); err != nil {
		t.Fatal(err)
	}
	// Re-assembling the parsed parts gives the quote back (without padding).
	again, err := AssembleQuote(raw[:HeaderSize], raw[HeaderSize:SignedSize], q.Signature, q.AttestationKey, q.QEReport, q.QEReportSignature, q.QEAuthData, q.PCKChain)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, raw[:len(again)]) {
		t.Fatal("assembled quote differs")
	}
	if !bytes.Equal(q.Body.Marshal(), raw[HeaderSize:SignedSize]) {
		t.Fatal("body marshal differs")
	}
	built := BuildTDReport(&q.Body, r.CPUSVN, r.MAC)
	rb, err := ParseTDReport(built)
	if err != nil || rb.Match(q) != nil {
		t.Fatalf("built TD report does not match: %v", err)
	}
}

func TestParseQuoteRejects(t *testing.T) {
	raw, _ := fixture(t)
	mod := func(off int, v byte) []byte { b := bytes.Clone(raw); b[off] = v; return b }
	sdEnd := SignedSize + 4 + 4300
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"empty", "shorter", nil},
		{"huge", "exceeds", make([]byte, MaxQuoteSize+1)},
		{"version 3", "version", mod(0, 3)},
		{"key type", "attestation key type", mod(2, 3)},
		{"tee type", "TEE type", mod(4, 0)},
		{"signed data size", "exceeds", mod(SignedSize+1, 0xff)},
		{"padding not zero", "non-zero", mod(sdEnd+3, 1)},
		{"certification type", "certification data type", mod(SignedSize+4+128, 7)},
		{"truncated", "", raw[:SignedSize+100]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseQuote(tc.in)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
}

func TestParsePCKChainCanonical(t *testing.T) {
	raw, _ := fixture(t)
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	chain := bytes.Clone(q.PCKChain)
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"two certificates", chain[:bytes.LastIndex(chain, []byte("-----BEGIN"))]},
		{"newline becomes space", bytes.Replace(chain, []byte("\n"), []byte(" "), 3)},
		{"CRLF", bytes.ReplaceAll(chain, []byte("\n"), []byte("\r\n"))},
		{"trailing garbage", append(bytes.Clone(chain), 'x')},
		{"wrong block type", bytes.Replace(chain, []byte("BEGIN CERTIFICATE"), []byte("BEGIN CERTIFICATX"), 1)},
		{"four certificates", append(bytes.Clone(chain[:len(chain)-1]), chain...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParsePCKChain(tc.in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
}

func TestTDReportMismatch(t *testing.T) {
	raw, report := fixture(t)
	q, err := ParseQuote(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{40, 100, 150, 300, 600, 900} {
		b := bytes.Clone(report)
		b[off] ^= 1
		r, err := ParseTDReport(b)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Match(q); !errors.Is(err, ErrTDReportMismatch) {
			t.Fatalf("offset %d: %v", off, err)
		}
	}
	if _, err := ParseTDReport(report[:100]); !errors.Is(err, ErrMalformed) {
		t.Fatal("short TD report accepted")
	}
}

func FuzzParseQuote(f *testing.F) {
	raw, _ := fixture(f)
	f.Add(raw)
	f.Add(raw[:SignedSize+200])
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if len(q.Signed()) != SignedSize || len(q.QEReportData()) != 64 {
			t.Fatal("bad slices")
		}
		if c, err := ParsePCKChain(q.PCKChain); err == nil && (c.PCK == nil || c.Root == nil) {
			t.Fatal("chain without certificates")
		}
	})
}
