package hcl

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"
)

func fixtureHCL(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile("../testdata/azure/" + name)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		HCL string `json:"hcl_report"`
	}
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	h, err := base64.StdEncoding.DecodeString(b.HCL)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestParseFixtures(t *testing.T) {
	for _, tc := range []struct {
		file    string
		typ     ReportType
		hwSize  int
		version uint32
		vmid    string
	}{
		{"snp-milan-a.bundle.json", ReportTypeSNP, SNPReportSize, 1, "26F8BC30-774E-4290-8E7A-535F3B672AEE"},
		{"tdx-a.bundle.json", ReportTypeTDX, TDReportSize, 2, "6332533D-5649-4D02-8AA7-8F64B7C3EE21"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			r, err := Parse(fixtureHCL(t, tc.file))
			if err != nil {
				t.Fatal(err)
			}
			if r.Type != tc.typ || len(r.Hardware) != tc.hwSize || r.Version != tc.version || r.HashType != HashSHA256 {
				t.Fatalf("parsed %+v", r)
			}
			rd, err := ParseRuntimeData(r.RuntimeData)
			if err != nil {
				t.Fatal(err)
			}
			if rd.VMConfiguration.VMUniqueID != tc.vmid || rd.VMConfiguration.SecureBoot == nil || !*rd.VMConfiguration.SecureBoot {
				t.Fatalf("vm-configuration %+v", rd.VMConfiguration)
			}
			ak, err := rd.Key(KidAK)
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := ak.(*rsa.PublicKey); !ok || k.N.BitLen() != 2048 || k.E != 65537 {
				t.Fatalf("AK %T", ak)
			}
			if _, err := rd.Key("nope"); !errors.Is(err, ErrKeyNotFound) {
				t.Fatalf("missing kid: %v", err)
			}
		})
	}
}

func TestBuildParseRoundTrip(t *testing.T) {
	hw := bytes.Repeat([]byte{0xAB}, SNPReportSize)
	rt := []byte(`{"keys":[],"vm-configuration":{"vmUniqueId":"X"}}`)
	b, err := Build(1, ReportTypeSNP, hw, rt, 2600)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 2600 {
		t.Fatalf("len %d", len(b))
	}
	r, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Hardware, hw) || !bytes.Equal(r.RuntimeData, rt) {
		t.Fatal("round trip changed data")
	}
	rd := ReportData(rt)
	if err := r.CheckBinding(rd[:]); err != nil {
		t.Fatal(err)
	}
	rd[40] = 1
	if err := r.CheckBinding(rd[:]); err == nil {
		t.Fatal("non-zero tail accepted")
	}
	rd = ReportData(append(rt, ' '))
	if err := r.CheckBinding(rd[:]); err == nil {
		t.Fatal("wrong digest accepted")
	}
	if _, err := Build(1, ReportTypeSNP, make([]byte, HardwareSize+1), rt, 0); err == nil {
		t.Fatal("oversized hardware report accepted")
	}
}

func TestParseErrors(t *testing.T) {
	good, err := Build(2, ReportTypeTDX, make([]byte, TDReportSize), []byte(`{}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	put := func(off int, v uint32) func([]byte) []byte {
		return func(b []byte) []byte { binary.LittleEndian.PutUint32(b[off:], v); return b }
	}
	const req = HeaderSize + HardwareSize
	for _, tc := range []struct {
		name, want string
		in         []byte
	}{
		{"empty", "shorter", nil},
		{"short", "shorter", good[:RuntimeDataStart-1]},
		{"huge", "exceeds", make([]byte, MaxSize+1)},
		{"magic", "magic", mod(func(b []byte) []byte { b[0] = 'X'; return b })},
		{"version", "version", mod(put(4, 7))},
		{"report type", "report type", mod(put(req+8, 3))},
		{"hash type", "hash type", mod(put(req+12, 9))},
		{"runtime size beyond data", "exceeds", mod(put(req+16, 1000))},
		{"request data size", "request data size", mod(put(req, 99))},
		{"report size", "report size", mod(put(8, 99))},
		{"empty runtime data", "empty", mod(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[req+16:], 0)
			binary.LittleEndian.PutUint32(b[req:], RequestDataSize)
			binary.LittleEndian.PutUint32(b[8:], RuntimeDataStart)
			return b
		})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.in)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want ErrMalformed mentioning %q", err, tc.want)
			}
		})
	}
}

func TestRuntimeDataErrors(t *testing.T) {
	for _, tc := range []struct{ name, in string }{
		{"not JSON", `{"keys":`},
		{"duplicate kid", `{"keys":[{"kid":"HCLAkPub","kty":"RSA"},{"kid":"HCLAkPub","kty":"RSA"}]}`},
		{"no kid", `{"keys":[{"kty":"RSA"}]}`},
		{"too many keys", `{"keys":[` + strings.TrimSuffix(strings.Repeat(`{"kid":"a","kty":"RSA"},`, MaxKeys+1), ",") + `]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ParseRuntimeData([]byte(tc.in)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestJWK(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, curve := range []elliptic.Curve{elliptic.P256(), elliptic.P384()} {
		ek, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		j, err := JWKFromPublicKey("k", ek.Public())
		if err != nil {
			t.Fatal(err)
		}
		back, err := j.PublicKey()
		if err != nil || !ek.PublicKey.Equal(back) {
			t.Fatalf("EC round trip: %v", err)
		}
	}
	j, err := JWKFromPublicKey("k", rk.Public(), "sign")
	if err != nil {
		t.Fatal(err)
	}
	back, err := j.PublicKey()
	if err != nil || !rk.PublicKey.Equal(back) {
		t.Fatalf("RSA round trip: %v", err)
	}
	bad := []JWK{
		{Kty: "oct"},
		{Kty: "RSA", N: "!!", E: "AQAB"},
		{Kty: "RSA", N: "AQAB", E: "AQAB"}, // modulus too small
		{Kty: "RSA", N: j.N, E: "Ag"},      // even exponent
		{Kty: "RSA", N: j.N, E: "AQIDBAU"}, // exponent too long
		{Kty: "EC", Crv: "P-521"},
		{Kty: "EC", Crv: "P-256", X: "AA", Y: "AA"},
	}
	ec, _ := JWKFromPublicKey("k", must(ecdsa.GenerateKey(elliptic.P256(), rand.Reader)).Public())
	ec.Y = ec.X // not on the curve
	bad = append(bad, ec)
	for i, k := range bad {
		if _, err := k.PublicKey(); err == nil {
			t.Fatalf("bad JWK %d accepted", i)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func FuzzParse(f *testing.F) {
	f.Add(fixtureHCL(f, "snp-milan-a.bundle.json"))
	f.Add(fixtureHCL(f, "tdx-a.bundle.json"))
	small, _ := Build(1, ReportTypeSNP, nil, []byte(`{"keys":[{"kid":"HCLAkPub","kty":"EC","crv":"P-256","x":"","y":""}]}`), 0)
	f.Add(small)
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		if len(r.RuntimeData) == 0 || RuntimeDataStart+len(r.RuntimeData) > len(b) {
			t.Fatalf("runtime data out of bounds")
		}
		_ = r.CheckBinding(make([]byte, 64))
		if rd, err := ParseRuntimeData(r.RuntimeData); err == nil {
			for _, k := range rd.Keys {
				_, _ = rd.Key(k.Kid)
			}
		}
	})
}
