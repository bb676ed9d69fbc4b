// Package hcl parses and builds the Azure paravisor (HCL) attestation report
// stored in vTPM NV index 0x01400001: the hardware report plus the runtime
// data whose digest the hardware report binds.
package hcl

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// NVIndex is the vTPM NV index holding the HCL report on Azure CVMs.
const NVIndex = 0x01400001

// Layout of the HCL report (all integers little-endian).
const (
	HeaderSize       = 32   // "HCLA", version, report size, request type, reserved
	HardwareSize     = 1184 // area reserved for the hardware report
	RequestDataSize  = 20   // IGVM request data header
	RuntimeDataStart = HeaderSize + HardwareSize + RequestDataSize

	// SNPReportSize is the size of an SEV-SNP attestation report.
	SNPReportSize = 1184
	// TDReportSize is the size of a TDX TD report (TDREPORT_STRUCT).
	TDReportSize = 1024

	// MaxSize bounds the accepted input. The Azure NV index is 2600 bytes.
	MaxSize = 16 << 10
)

// Magic starts every HCL report.
var Magic = [4]byte{'H', 'C', 'L', 'A'}

// ReportType says which hardware report the HCL report carries.
type ReportType uint32

// Report types of the IGVM request data.
const (
	ReportTypeSNP ReportType = 2
	ReportTypeTDX ReportType = 4
)

func (t ReportType) String() string {
	switch t {
	case ReportTypeSNP:
		return "snp"
	case ReportTypeTDX:
		return "tdx"
	}
	return fmt.Sprintf("unknown(%d)", uint32(t))
}

// HashType is the hash the hardware report's report data uses over the runtime data.
type HashType uint32

// Hash types of the IGVM request data.
const (
	HashSHA256 HashType = 1
	HashSHA384 HashType = 2
	HashSHA512 HashType = 3
)

// Size is the digest size of h, or 0 when unknown.
func (h HashType) Size() int {
	switch h {
	case HashSHA256:
		return sha256.Size
	case HashSHA384:
		return sha512.Size384
	case HashSHA512:
		return sha512.Size
	}
	return 0
}

func (h HashType) new() hash.Hash {
	switch h {
	case HashSHA384:
		return sha512.New384()
	case HashSHA512:
		return sha512.New()
	}
	return sha256.New()
}

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("hcl: malformed report")

// Report is a parsed HCL report. Its byte slices alias the parsed input.
type Report struct {
	Version     uint32
	ReportSize  uint32 // header + hardware area + request data + runtime data
	RequestType uint32
	Type        ReportType
	HashType    HashType
	// DataVersion is the IGVM request data version.
	DataVersion uint32
	// HardwareArea is the whole 1184-byte area after the header.
	HardwareArea []byte
	// Hardware is the hardware report: the full SNP attestation report, or
	// the 1024-byte TD report.
	Hardware []byte
	// RuntimeData is the runtime data JSON exactly as stored; its digest is
	// what the hardware report's report data must carry.
	RuntimeData []byte
}

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Parse parses an HCL report (the NV index contents, zero padding allowed).
func Parse(b []byte) (*Report, error) {
	if len(b) > MaxSize {
		return nil, malformed("%d bytes exceeds the %d byte limit", len(b), MaxSize)
	}
	if len(b) < RuntimeDataStart {
		return nil, malformed("%d bytes is shorter than the %d byte fixed part", len(b), RuntimeDataStart)
	}
	if !bytes.Equal(b[0:4], Magic[:]) {
		return nil, malformed("magic is %q, want %q", b[0:4], Magic[:])
	}
	r := &Report{
		Version:     binary.LittleEndian.Uint32(b[4:8]),
		ReportSize:  binary.LittleEndian.Uint32(b[8:12]),
		RequestType: binary.LittleEndian.Uint32(b[12:16]),
	}
	if r.Version != 1 && r.Version != 2 {
		return nil, malformed("unsupported version %d", r.Version)
	}
	req := b[HeaderSize+HardwareSize : RuntimeDataStart]
	dataSize := binary.LittleEndian.Uint32(req[0:4])
	r.DataVersion = binary.LittleEndian.Uint32(req[4:8])
	r.Type = ReportType(binary.LittleEndian.Uint32(req[8:12]))
	r.HashType = HashType(binary.LittleEndian.Uint32(req[12:16]))
	varSize := binary.LittleEndian.Uint32(req[16:20])

	switch r.Type {
	case ReportTypeSNP, ReportTypeTDX:
	default:
		return nil, malformed("unknown report type %d", uint32(r.Type))
	}
	if r.HashType.Size() == 0 {
		return nil, malformed("unknown hash type %d", uint32(r.HashType))
	}
	avail := uint64(len(b) - RuntimeDataStart)
	if uint64(varSize) > avail {
		return nil, malformed("runtime data size %d exceeds the %d bytes present", varSize, avail)
	}
	if uint64(dataSize) != RequestDataSize+uint64(varSize) {
		return nil, malformed("request data size %d does not match runtime data size %d", dataSize, varSize)
	}
	if uint64(r.ReportSize) != RuntimeDataStart+uint64(varSize) {
		return nil, malformed("report size %d does not match runtime data size %d", r.ReportSize, varSize)
	}
	if varSize == 0 {
		return nil, malformed("runtime data is empty")
	}
	r.HardwareArea = b[HeaderSize : HeaderSize+HardwareSize]
	switch r.Type {
	case ReportTypeSNP:
		r.Hardware = r.HardwareArea[:SNPReportSize]
	case ReportTypeTDX:
		r.Hardware = r.HardwareArea[:TDReportSize]
	}
	r.RuntimeData = b[RuntimeDataStart : RuntimeDataStart+int(varSize)]
	return r, nil
}

// RuntimeDataDigest is the digest of the runtime data with the report's hash type.
func (r *Report) RuntimeDataDigest() []byte {
	h := r.HashType.new()
	h.Write(r.RuntimeData)
	return h.Sum(nil)
}

// CheckBinding reports whether reportData (the hardware report's 64-byte
// report data) starts with the runtime data digest and is zero after it.
func (r *Report) CheckBinding(reportData []byte) error {
	want := r.RuntimeDataDigest()
	if len(reportData) < len(want) {
		return fmt.Errorf("report data is %d bytes, shorter than the %d byte digest", len(reportData), len(want))
	}
	if !bytes.Equal(reportData[:len(want)], want) {
		return fmt.Errorf("report data %x is not the runtime data digest %x", reportData[:len(want)], want)
	}
	for _, c := range reportData[len(want):] {
		if c != 0 {
			return fmt.Errorf("report data after the runtime data digest is not zero")
		}
	}
	return nil
}

// Build assembles an HCL report as the paravisor writes it: header, the
// hardware report in its 1184-byte area, request data and runtime data,
// zero-padded to padTo bytes when padTo is larger.
func Build(version uint32, t ReportType, hardware, runtimeData []byte, padTo int) ([]byte, error) {
	if len(hardware) > HardwareSize {
		return nil, fmt.Errorf("hcl: hardware report of %d bytes does not fit %d", len(hardware), HardwareSize)
	}
	if len(runtimeData) == 0 || RuntimeDataStart+len(runtimeData) > MaxSize {
		return nil, fmt.Errorf("hcl: runtime data of %d bytes is empty or too large", len(runtimeData))
	}
	size := RuntimeDataStart + len(runtimeData)
	out := make([]byte, max(size, padTo))
	copy(out[0:4], Magic[:])
	binary.LittleEndian.PutUint32(out[4:8], version)
	binary.LittleEndian.PutUint32(out[8:12], uint32(size))
	binary.LittleEndian.PutUint32(out[12:16], 2) // request type: AK cert request
	copy(out[HeaderSize:], hardware)
	req := out[HeaderSize+HardwareSize : RuntimeDataStart]
	binary.LittleEndian.PutUint32(req[0:4], uint32(RequestDataSize+len(runtimeData)))
	binary.LittleEndian.PutUint32(req[4:8], 1)
	binary.LittleEndian.PutUint32(req[8:12], uint32(t))
	binary.LittleEndian.PutUint32(req[12:16], uint32(HashSHA256))
	binary.LittleEndian.PutUint32(req[16:20], uint32(len(runtimeData)))
	copy(out[RuntimeDataStart:], runtimeData)
	return out, nil
}

// ReportData returns the 64-byte report data binding runtimeData with SHA-256.
func ReportData(runtimeData []byte) [64]byte {
	var rd [64]byte
	d := sha256.Sum256(runtimeData)
	copy(rd[:], d[:])
	return rd
}
