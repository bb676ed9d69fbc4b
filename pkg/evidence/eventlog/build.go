package eventlog

import (
	"crypto/sha256"
	"encoding/binary"
	"unicode/utf16"
)

// Builder writes a crypto-agile event log with a single SHA-256 bank and
// tracks the PCR values it produces.
type Builder struct {
	buf []byte
	log Log
}

// NewBuilder starts a log whose PCR 0 starts at the given locality.
func NewBuilder(locality byte) *Builder {
	b := &Builder{log: Log{Locality: locality}}
	// Spec ID event in the SHA-1 event format.
	var spec []byte
	spec = append(spec, specIDSignature...)
	spec = binary.LittleEndian.AppendUint32(spec, 0) // platform class: client
	spec = append(spec, 0, 2, 0, 2)                  // version 2.0, errata 0, uintn size 2 (64 bit)
	spec = binary.LittleEndian.AppendUint32(spec, 1)
	spec = binary.LittleEndian.AppendUint16(spec, algSHA256)
	spec = binary.LittleEndian.AppendUint16(spec, 32)
	spec = append(spec, 0) // vendor info size
	b.buf = binary.LittleEndian.AppendUint32(b.buf, 0)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, EVNoAction)
	b.buf = append(b.buf, make([]byte, 20)...)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, uint32(len(spec)))
	b.buf = append(b.buf, spec...)
	if locality != 0 {
		data := append([]byte(startupLocalitySignature), locality)
		b.event(0, EVNoAction, make([]byte, 32), data)
	}
	return b
}

func (b *Builder) event(pcr int, typ uint32, digest, data []byte) {
	b.buf = binary.LittleEndian.AppendUint32(b.buf, uint32(pcr))
	b.buf = binary.LittleEndian.AppendUint32(b.buf, typ)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, 1)
	b.buf = binary.LittleEndian.AppendUint16(b.buf, algSHA256)
	b.buf = append(b.buf, digest...)
	b.buf = binary.LittleEndian.AppendUint32(b.buf, uint32(len(data)))
	b.buf = append(b.buf, data...)
	if typ != EVNoAction {
		b.log.Events = append(b.log.Events, Event{PCR: pcr, Type: typ, SHA256: digest, Data: data})
	}
}

// Measure extends pcr with the SHA-256 of data and records the event.
func (b *Builder) Measure(pcr int, typ uint32, data []byte) {
	d := sha256.Sum256(data)
	b.event(pcr, typ, d[:], data)
}

// MeasureDigest extends pcr with digest, recording data as the event data.
func (b *Builder) MeasureDigest(pcr int, typ uint32, digest [32]byte, data []byte) {
	b.event(pcr, typ, digest[:], data)
}

// SecureBootVariable measures the SecureBoot UEFI variable into PCR 7.
func (b *Builder) SecureBootVariable(enabled bool) {
	name := utf16.Encode([]rune("SecureBoot"))
	var v []byte
	v = append(v, efiGlobalVariableGUIDMixed...)
	v = binary.LittleEndian.AppendUint64(v, uint64(len(name)))
	v = binary.LittleEndian.AppendUint64(v, 1)
	for _, c := range name {
		v = binary.LittleEndian.AppendUint16(v, c)
	}
	if enabled {
		v = append(v, 1)
	} else {
		v = append(v, 0)
	}
	b.Measure(7, EVEFIVariableDriverConfig, v)
}

// Separator measures the separator event into pcr.
func (b *Builder) Separator(pcr int) { b.Measure(pcr, EVSeparator, []byte{0, 0, 0, 0}) }

// Bytes returns the encoded log.
func (b *Builder) Bytes() []byte { return append([]byte(nil), b.buf...) }

// PCRs returns the PCR values the log produces (PCRs it extends only).
func (b *Builder) PCRs() map[int][]byte { return b.log.Replay() }
