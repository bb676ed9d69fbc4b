package tdx

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"fmt"
)

// TD report layout (TDREPORT_STRUCT, 1024 bytes).
const (
	TDReportSize   = 1024
	teeTCBInfoSize = 239
	tdInfoSize     = 512
	reportTypeTDX  = 0x81
)

// ErrTDReportMismatch is returned when a TD report and a quote disagree.
var ErrTDReportMismatch = errors.New("tdx: TD report does not match the quote")

// TDReport is a parsed TD report. Its MAC can only be checked by the CPU
// that made it; it is tied to a quote by Match. Slices alias the input.
type TDReport struct {
	Raw            []byte
	ReportType     byte
	CPUSVN         []byte
	TEETCBInfoHash []byte
	TDInfoHash     []byte
	ReportData     []byte
	MAC            []byte
	TEETCBInfo     []byte // 239 bytes
	TDInfo         []byte // 512 bytes
}

// ParseTDReport parses a 1024-byte TD report.
func ParseTDReport(b []byte) (*TDReport, error) {
	if len(b) != TDReportSize {
		return nil, malformed("TD report of %d bytes, want %d", len(b), TDReportSize)
	}
	r := &TDReport{
		Raw:            b,
		ReportType:     b[0],
		CPUSVN:         b[16:32],
		TEETCBInfoHash: b[32:80],
		TDInfoHash:     b[80:128],
		ReportData:     b[128:192],
		MAC:            b[224:256],
		TEETCBInfo:     b[256 : 256+teeTCBInfoSize],
		TDInfo:         b[512 : 512+tdInfoSize],
	}
	if r.ReportType != reportTypeTDX {
		return nil, malformed("TD report type 0x%x, want 0x%x", r.ReportType, reportTypeTDX)
	}
	return r, nil
}

// Match checks that the report is the one the quote was made from: the
// TEE_TCB_INFO and TDINFO hashes hold, and every field the quote body
// carries is the same in the report.
func (r *TDReport) Match(q *Quote) error {
	h := sha512.Sum384(r.TEETCBInfo)
	if !bytes.Equal(h[:], r.TEETCBInfoHash) {
		return fmt.Errorf("%w: TEE_TCB_INFO hash does not hold", ErrTDReportMismatch)
	}
	h = sha512.Sum384(r.TDInfo)
	if !bytes.Equal(h[:], r.TDInfoHash) {
		return fmt.Errorf("%w: TDINFO hash does not hold", ErrTDReportMismatch)
	}
	ti, td, b := r.TEETCBInfo, r.TDInfo, &q.Body
	fields := []struct {
		name      string
		rep, body []byte
	}{
		{"report data", r.ReportData, b.ReportData},
		{"TEE_TCB_SVN", ti[8:24], b.TEETCBSVN},
		{"MRSEAM", ti[24:72], b.MRSEAM},
		{"MRSIGNERSEAM", ti[72:120], b.MRSignerSEAM},
		{"SEAM attributes", ti[120:128], b.SEAMAttributes},
		{"TD attributes", td[0:8], b.TDAttributes},
		{"XFAM", td[8:16], b.XFAM},
		{"MRTD", td[16:64], b.MRTD},
		{"MRCONFIGID", td[64:112], b.MRConfigID},
		{"MROWNER", td[112:160], b.MROwner},
		{"MROWNERCONFIG", td[160:208], b.MROwnerConfig},
		{"RTMR0", td[208:256], b.RTMR[0]},
		{"RTMR1", td[256:304], b.RTMR[1]},
		{"RTMR2", td[304:352], b.RTMR[2]},
		{"RTMR3", td[352:400], b.RTMR[3]},
	}
	for _, f := range fields {
		if !bytes.Equal(f.rep, f.body) {
			return fmt.Errorf("%w: %s differs", ErrTDReportMismatch, f.name)
		}
	}
	return nil
}

// BuildTDReport encodes a TD report whose fields match body, with the
// hashes a TDX module computes. The MAC is filled with mac (32 bytes) since
// only the CPU could compute it.
func BuildTDReport(body *Body, cpuSVN, mac []byte) []byte {
	out := make([]byte, TDReportSize)
	out[0] = reportTypeTDX
	out[2] = 1 // version
	copy(out[16:32], cpuSVN)
	ti := out[256 : 256+teeTCBInfoSize]
	copy(ti[0:8], []byte{0xff, 0x01, 0x03}) // valid fields
	copy(ti[8:24], body.TEETCBSVN)
	copy(ti[24:72], body.MRSEAM)
	copy(ti[72:120], body.MRSignerSEAM)
	copy(ti[120:128], body.SEAMAttributes)
	td := out[512 : 512+tdInfoSize]
	copy(td[0:8], body.TDAttributes)
	copy(td[8:16], body.XFAM)
	copy(td[16:64], body.MRTD)
	copy(td[64:112], body.MRConfigID)
	copy(td[112:160], body.MROwner)
	copy(td[160:208], body.MROwnerConfig)
	for i, rt := range body.RTMR {
		copy(td[208+48*i:256+48*i], rt)
	}
	h := sha512.Sum384(ti)
	copy(out[32:80], h[:])
	h = sha512.Sum384(td)
	copy(out[80:128], h[:])
	copy(out[128:192], body.ReportData)
	copy(out[224:256], mac)
	return out
}
