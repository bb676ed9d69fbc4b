package evidence

import "testing"

// BenchmarkParseBundle measures ParseBundle on the captured Azure bundles
// (the SNP one carries its VCEK as PEM with \n escapes): fast is the hand
// written decoder (fastjson.go), encoding-json the encoding/json path
// ParseBundle falls back to for any other input.
func BenchmarkParseBundle(b *testing.B) {
	decoders := []struct {
		name   string
		decode func(raw []byte) (fields, error)
	}{
		{"fast", func(raw []byte) (f fields, err error) { return f, decodeFast(raw, &f) }},
		{"encoding-json", func(raw []byte) (fields, error) {
			var w wireBundle
			err := decodeWire(raw, &w)
			return w.fields(), err
		}},
	}
	for _, name := range []string{"snp-milan-a.bundle.json", "tdx-a.bundle.json"} {
		raw, _ := loadFixture(b, name)
		for _, d := range decoders {
			b.Run(name[:3]+"/"+d.name, func(b *testing.B) {
				b.SetBytes(int64(len(raw)))
				b.ReportAllocs()
				for b.Loop() {
					f, err := d.decode(raw)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := f.bundle(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
