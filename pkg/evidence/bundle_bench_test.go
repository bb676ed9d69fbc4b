package evidence

import "testing"

// BenchmarkParseBundle measures ParseBundle on the captured Azure bundles
// (the SNP one carries its VCEK as PEM with \n escapes): fast is the hand
// written decoder (fastjson.go), encoding-json the encoding/json path
// ParseBundle falls back to for any other input.
func BenchmarkParseBundle(b *testing.B) {
	for _, name := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		raw, _ := loadFixture(b, name)
		b.Run(name[:3]+"/fast", func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				var f fields
				if err := decodeFast(raw, &f); err != nil {
					b.Fatal(err)
				}
				if _, err := f.bundle(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(name[:3]+"/encoding-json", func(b *testing.B) {
			b.SetBytes(int64(len(raw)))
			b.ReportAllocs()
			for b.Loop() {
				var w wireBundle
				if err := decodeWire(raw, &w); err != nil {
					b.Fatal(err)
				}
				f := w.fields()
				if _, err := f.bundle(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
