package eventgrid

import (
	"encoding/json"
	"strings"
	"testing"
)

// batch is an Event Grid delivery of 20 events in both schemas.
var batch = []byte("[" + strings.Repeat(egEvent+","+ceEvent+",", 9) + egEvent + "," + ceEvent + "]")

// BenchmarkParse measures reading a delivery's events: fast is Parse's
// single pass (split the batch, validate and read each event's
// attributes); encoding-json the same reading with encoding/json (the
// batch into raw elements, each into stdEvent). Both stop short of the
// checks Parse makes after reading.
func BenchmarkParse(b *testing.B) {
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(batch)))
		b.ReportAllocs()
		for b.Loop() {
			d, err := Parse(batch, Limits{})
			if err != nil || len(d.Events) != 20 {
				b.Fatal(err, d.Err())
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(batch)))
		b.ReportAllocs()
		for b.Loop() {
			var elems []json.RawMessage
			if err := json.Unmarshal(batch, &elems); err != nil {
				b.Fatal(err)
			}
			for _, el := range elems {
				var ev stdEvent
				if err := json.Unmarshal(el, &ev); err != nil || ev.ID == nil {
					b.Fatal(err)
				}
			}
		}
	})
}
