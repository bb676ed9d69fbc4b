package canonjson

import (
	"bytes"
	"encoding/json"
	"testing"
)

// event is a CloudEvent as Vigil's services publish it: members in struct
// order, nested objects, strings without escapes, small integers.
var event = []byte(`{"specversion":"1.0","id":"0193a4f2-7b1c-7d2e-9f3a-5b6c7d8e9f01","source":"bench","type":"cc.vigil.verdict.v1","subject":"azure.subscriptions.s.resourcegroups.rg.providers.microsoft.compute.virtualmachines.vm1","time":"2026-11-27T03:04:05.123456789Z","datacontenttype":"application/json","data":{"id":"v-1","vm_key":"azure.subscriptions.s.resourcegroups.rg.providers.microsoft.compute.virtualmachines.vm1","platform":"azure-sev-snp","status":"affirming","evidence_digest":"sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","policy_id":"default","policy_version":3,"verifier_build":"bench","issued_at":"2026-11-27T03:04:05.123456789Z","tcb":{"bootloader":3,"tee":0,"snp":8,"microcode":115,"product":"Genoa"}}}`)

func BenchmarkAppendTransform(b *testing.B) {
	b.SetBytes(int64(len(event)))
	buf := make([]byte, 0, 2*len(event))
	for b.Loop() {
		var err error
		if buf, err = AppendTransform(buf[:0], event, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTransformEncodingJSON is BenchmarkAppendTransform's work done
// with encoding/json: decode to any, encode again (map keys sorted, no
// HTML escaping). It is not RFC 8785 (numbers and key order differ), only
// the cheapest encoding/json way to a sorted, compact form.
func BenchmarkTransformEncodingJSON(b *testing.B) {
	b.SetBytes(int64(len(event)))
	var buf bytes.Buffer
	for b.Loop() {
		var v any
		if err := json.Unmarshal(event, &v); err != nil {
			b.Fatal(err)
		}
		buf.Reset()
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(v); err != nil {
			b.Fatal(err)
		}
	}
}
