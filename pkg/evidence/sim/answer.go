package sim

import (
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"time"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
)

// A simulated VM answers every challenge with the same boot-time evidence
// and a fresh TPM quote. Encoding the boot-time parts (base64 of the HCL
// report, the TD quote and the event log, the VCEK, the PCR map) and
// marshalling the fixed TPMS_ATTEST fields again for every challenge is
// most of an answer's cost, so prepare encodes them once per boot into
// templates that only the per-challenge values are spliced into. Each
// template is checked against the general encoders when it is made and
// left unused when it does not reproduce their bytes exactly.

// quoteTemplate builds a TPMS_ATTEST quote of a fixed signer, PCR set and
// firmware: magic, type and qualifiedSigner (head), then extraData and
// clock per challenge, then resetCount, restartCount, safe, firmware
// version and the quote info (tail).
type quoteTemplate struct {
	head, tail []byte
}

func (q *quoteTemplate) build(extra []byte, clock uint64) []byte {
	out := make([]byte, 0, len(q.head)+2+len(extra)+8+len(q.tail))
	out = append(out, q.head...)
	out = binary.BigEndian.AppendUint16(out, uint16(len(extra)))
	out = append(out, extra...)
	out = binary.BigEndian.AppendUint64(out, clock)
	return append(out, q.tail...)
}

// newQuoteTemplate derives the template from tpmquote.Build's encoding
// with empty extraData and a zero clock; nil when that encoding is not laid
// out as expected or the template does not reproduce Build's output.
func (vm *VM) newQuoteTemplate(hw *hwEvidence) *quoteTemplate {
	empty, err := tpmquote.Build(vm.quoteParams(hw, nil, 0))
	if err != nil {
		return nil
	}
	// magic (4) | type (2) | name size (2) | name | extraData size (2) | clock (8) | ...
	n := len(vm.akName)
	head := 8 + n
	if len(empty) < head+10 || int(binary.BigEndian.Uint16(empty[6:8])) != n ||
		!bytes.Equal(empty[8:head], vm.akName) || !bytes.Equal(empty[head:head+10], make([]byte, 10)) {
		return nil
	}
	q := &quoteTemplate{head: empty[:head:head], tail: empty[head+10:]}
	extra := []byte("vigil-sim quote template check")
	want, err := tpmquote.Build(vm.quoteParams(hw, extra, 0x0102030405060708))
	if err != nil || !bytes.Equal(q.build(extra, 0x0102030405060708), want) {
		return nil
	}
	return q
}

// wireTemplate is a bundle's JSON encoding with the per-challenge values
// cut out: parts[0] nonce parts[1] collected_at parts[2] tpm_quote.attest
// parts[3] tpm_quote.signature parts[4].
type wireTemplate struct {
	parts [5][]byte
}

func (w *wireTemplate) encode(b *evidence.Bundle) []byte {
	enc := base64.StdEncoding
	n := enc.EncodedLen(len(b.Nonce)) + len(time.RFC3339Nano) + enc.EncodedLen(len(b.TPMQuote.Attest)) + enc.EncodedLen(len(b.TPMQuote.Signature))
	for _, p := range w.parts {
		n += len(p)
	}
	out := make([]byte, 0, n)
	out = append(out, w.parts[0]...)
	out = enc.AppendEncode(out, b.Nonce)
	out = append(out, w.parts[1]...)
	out = b.CollectedAt.UTC().AppendFormat(out, time.RFC3339Nano)
	out = append(out, w.parts[2]...)
	out = enc.AppendEncode(out, b.TPMQuote.Attest)
	out = append(out, w.parts[3]...)
	out = enc.AppendEncode(out, b.TPMQuote.Signature)
	return append(out, w.parts[4]...)
}

// Marker values whose encodings are cut out of a sample bundle's JSON.
var (
	markNonce     = []byte("vigil-sim nonce marker.....")
	markAttest    = []byte("vigil-sim attest marker....")
	markSignature = []byte("vigil-sim signature marker.")
	markTime      = time.Date(1999, 12, 31, 23, 59, 58, 123456789, time.UTC)
)

// newWireTemplate cuts the JSON of a bundle with hw's boot-time evidence
// at the per-challenge values; nil when a marker is not found exactly once
// or the template does not reproduce (*evidence.Bundle).Marshal.
func (vm *VM) newWireTemplate(hw *hwEvidence) *wireTemplate {
	sample := func(nonce, attest, sig []byte, at time.Time) *evidence.Bundle {
		return &evidence.Bundle{
			Format: evidence.Format, Platform: vm.cfg.Platform, VMKey: vm.vmKey, Nonce: nonce, CollectedAt: at,
			HCLReport: hw.hcl, TDQuote: hw.tdQuote, VCEK: hw.vcekPEM, EventLog: hw.eventLog,
			TPMQuote: evidence.TPMQuote{Attest: attest, Signature: sig, PCRBank: "sha256", PCRs: hw.pcrs},
		}
	}
	raw, err := sample(markNonce, markAttest, markSignature, markTime).Marshal()
	if err != nil {
		return nil
	}
	enc := base64.StdEncoding
	marks := [][]byte{
		[]byte(enc.EncodeToString(markNonce)),
		[]byte(markTime.Format(time.RFC3339Nano)),
		[]byte(enc.EncodeToString(markAttest)),
		[]byte(enc.EncodeToString(markSignature)),
	}
	w := &wireTemplate{}
	rest := raw
	for i, m := range marks {
		if bytes.Count(raw, m) != 1 {
			return nil
		}
		before, after, ok := bytes.Cut(rest, m)
		if !ok {
			return nil
		}
		w.parts[i], rest = before, after
	}
	w.parts[4] = rest
	check := sample([]byte("nonce"), []byte("attest"), []byte("signature"), time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC))
	want, err := check.Marshal()
	if err != nil || !bytes.Equal(w.encode(check), want) {
		return nil
	}
	return w
}

// prepare makes hw's templates.
func (vm *VM) prepare(hw *hwEvidence) {
	hw.quote = vm.newQuoteTemplate(hw)
	hw.wire = vm.newWireTemplate(hw)
}
