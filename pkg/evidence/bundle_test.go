package evidence

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseBundleFieldErrors(t *testing.T) {
	raw, _ := loadFixture(t, "tdx-a.bundle.json")
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	edit := func(f func(m map[string]any)) []byte {
		var c map[string]any
		_ = json.Unmarshal(raw, &c)
		f(c)
		b, _ := json.Marshal(c)
		return b
	}
	quote := func(m map[string]any) map[string]any { return m["tpm_quote"].(map[string]any) }
	for _, tc := range []struct {
		name, field string
		in          []byte
	}{
		{"not JSON", "", []byte(`{"format":`)},
		{"too large", "", make([]byte, MaxBundleSize+1)},
		{"no format", "format", edit(func(m map[string]any) { delete(m, "format") })},
		{"other format", "format", edit(func(m map[string]any) { m["format"] = "vigil.evidence/v2" })},
		{"no platform", "platform", edit(func(m map[string]any) { delete(m, "platform") })},
		{"unknown platform", "platform", edit(func(m map[string]any) { m["platform"] = "aws-nitro" })},
		{"bad vm_key", "vm_key", edit(func(m map[string]any) { m["vm_key"] = "UPPER" })},
		{"nonce not base64", "nonce", edit(func(m map[string]any) { m["nonce"] = "***" })},
		{"nonce unpadded", "nonce", edit(func(m map[string]any) { m["nonce"] = "Y2hhbGxlbmdl"[:11] })},
		{"nonce too long", "nonce", edit(func(m map[string]any) { m["nonce"] = strings.Repeat("AAAA", 22) })},
		{"nonce wrong type", "nonce", edit(func(m map[string]any) { m["nonce"] = 7 })},
		{"bad collected_at", "collected_at", edit(func(m map[string]any) { m["collected_at"] = "yesterday" })},
		{"no hcl_report", "hcl_report", edit(func(m map[string]any) { delete(m, "hcl_report") })},
		{"no td_quote on TDX", "td_quote", edit(func(m map[string]any) { delete(m, "td_quote") })},
		{"no tpm_quote", "tpm_quote", edit(func(m map[string]any) { delete(m, "tpm_quote") })},
		{"no attest", "tpm_quote.attest", edit(func(m map[string]any) { delete(quote(m), "attest") })},
		{"no signature", "tpm_quote.signature", edit(func(m map[string]any) { delete(quote(m), "signature") })},
		{"no pcr_bank", "tpm_quote.pcr_bank", edit(func(m map[string]any) { delete(quote(m), "pcr_bank") })},
		{"bad pcr_bank", "tpm_quote.pcr_bank", edit(func(m map[string]any) { quote(m)["pcr_bank"] = "md5" })},
		{"no pcrs", "tpm_quote.pcrs", edit(func(m map[string]any) { delete(quote(m), "pcrs") })},
		{"bad pcr index", "tpm_quote.pcrs", edit(func(m map[string]any) { quote(m)["pcrs"].(map[string]any)["24"] = strings.Repeat("00", 32) })},
		{"leading zero index", "tpm_quote.pcrs", edit(func(m map[string]any) { quote(m)["pcrs"].(map[string]any)["07"] = strings.Repeat("00", 32) })},
		{"short pcr", "tpm_quote.pcrs.3", edit(func(m map[string]any) { quote(m)["pcrs"].(map[string]any)["3"] = "00" })},
		{"pcr not hex", "tpm_quote.pcrs.3", edit(func(m map[string]any) { quote(m)["pcrs"].(map[string]any)["3"] = strings.Repeat("zz", 32) })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseBundle(tc.in)
			var fe *FieldError
			if !errors.Is(err, ErrInvalidBundle) || !errors.As(err, &fe) || fe.Field != tc.field {
				t.Fatalf("error %v (field %q), want field %q", err, fieldOf(fe), tc.field)
			}
		})
	}
}

func fieldOf(fe *FieldError) string {
	if fe == nil {
		return "<none>"
	}
	return fe.Field
}

func TestBundleMarshalRoundTrip(t *testing.T) {
	for _, f := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		_, b := loadFixture(t, f)
		out, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		b2, err := ParseBundle(out)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(b, b2) {
			t.Fatalf("%s: round trip differs", f)
		}
	}
}

// TestFastPathMatchesEncodingJSON checks the fast decoder against
// encoding/json on inputs it handles and inputs it must hand over.
func TestFastPathMatchesEncodingJSON(t *testing.T) {
	raw, _ := loadFixture(t, "snp-milan-a.bundle.json")
	var f fields
	if err := decodeFast(raw, &f); err != nil {
		t.Fatalf("fixture not on the fast path: %v", err)
	}
	variants := [][]byte{
		raw,
		bytes.Replace(raw, []byte(`"format"`), []byte(`"FORMAT"`), 1),                            // case-insensitive key
		bytes.Replace(raw, []byte(`"platform"`), []byte(`"extra":[1,{"a":null}],"platform"`), 1), // unknown key
		bytes.Replace(raw, []byte(`"nonce": "Y2hh`), []byte(`"nonce": "\u00592hh`), 1),           // escape
		bytes.Replace(raw, []byte(`"format"`), []byte(`"nonce":"AAAA","format"`), 1),             // duplicate key
		append(bytes.Clone(raw), []byte(" \n")...),
		append(bytes.Clone(raw), 'x'),
		[]byte(`{}`),
		[]byte(`{"format":"\u00e9"}`),
		[]byte(`{"format":"\ud83d\ude00","platform":"\ud83d","vm_key":"\ude00\ud83d"}`), // surrogates, paired or not
		[]byte("{\"format\":\"a\xffb\",\"platform\":\"\xed\xa0\x80\"}"),                 // invalid UTF-8
		[]byte(`{"form\u0061t":"x"}`),                                                   // escaped key
		[]byte(`{"format":"\x"}`),
		[]byte("{\"format\":\"a\tb\"}"),
		[]byte(`{"format":"vigil.evidence/v1","platform":"azure-sev-snp","tpm_quote":{"pcrs":{"0":"x","0":"y"}}}`),
		[]byte(`{"tpm_quote":null}`),
		[]byte(`[]`),
	}
	for i, in := range variants {
		checkDifferential(t, i, in)
	}
	// Escapes, unpaired surrogates and invalid UTF-8 stay on the fast
	// path, which decodes them as encoding/json does (checked above).
	for _, i := range []int{3, 9, 10, 11} {
		if err := decodeFast(variants[i], &f); err != nil {
			t.Errorf("variant %d %q: not on the fast path: %v", i, variants[i][:min(len(variants[i]), 40)], err)
		}
	}
}

func checkDifferential(t *testing.T, i int, in []byte) {
	t.Helper()
	var fast fields
	var slow wireBundle
	fastErr := decodeFast(in, &fast)
	slowErr := decodeWire(in, &slow)
	if fastErr == nil {
		if slowErr != nil {
			t.Fatalf("variant %d: fast path accepted what encoding/json rejects: %v", i, slowErr)
		}
		if !sameFields(fast, slow.fields()) {
			t.Fatalf("variant %d: fast %+v, encoding/json %+v", i, fast, slow)
		}
	} else if !errors.Is(fastErr, errSlowPath) {
		t.Fatalf("variant %d: fast path error %v", i, fastErr)
	}
}

func sameFields(a, b fields) bool {
	eq := bytes.Equal
	if !eq(a.format, b.format) || !eq(a.platform, b.platform) || !eq(a.vmKey, b.vmKey) || !eq(a.nonce, b.nonce) ||
		!eq(a.collectedAt, b.collectedAt) || !eq(a.hcl, b.hcl) || !eq(a.tdQuote, b.tdQuote) || !eq(a.vcek, b.vcek) ||
		!eq(a.eventLog, b.eventLog) || a.hasQuote != b.hasQuote || !eq(a.attest, b.attest) ||
		!eq(a.signature, b.signature) || !eq(a.pcrBank, b.pcrBank) || len(a.pcrs) != len(b.pcrs) {
		return false
	}
	// encoding/json loses a present-but-empty pcrs object; only compare entries.
	m := map[string]string{}
	for _, p := range a.pcrs {
		m[string(p.key)] = string(p.val)
	}
	for _, p := range b.pcrs {
		if v, ok := m[string(p.key)]; !ok || v != string(p.val) {
			return false
		}
	}
	return true
}

func FuzzParseBundle(f *testing.F) {
	for _, name := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		raw, _ := loadFixture(f, name)
		f.Add(raw)
	}
	f.Add([]byte(`{"format":"vigil.evidence/v1","platform":"azure-tdx","nonce":"AA==","hcl_report":"AA==","td_quote":"AA==","tpm_quote":{"attest":"AA==","signature":"AA==","pcr_bank":"sha256","pcrs":{"0":"00"}}}`))
	v, err := NewVerifier(Config{Offline: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		checkDifferential(t, 0, raw)
		b, err := ParseBundle(raw)
		if err != nil {
			if !errors.Is(err, ErrInvalidBundle) {
				t.Fatalf("error not ErrInvalidBundle: %v", err)
			}
			return
		}
		res := v.VerifyBundle(t.Context(), b, Expect{})
		if res.Genuine && !bytes.Contains(raw, []byte("hcl_report")) {
			t.Fatal("genuine without an HCL report")
		}
	})
}
