// Package eventlog parses TCG PC Client crypto-agile event logs with
// bounds, replays their SHA-256 PCR bank, reads the UEFI secure boot state,
// and builds such logs for simulated VMs.
package eventlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"unicode/utf16"
)

// Event types used here (TCG PC Client Platform Firmware Profile).
const (
	EVPostCode                 uint32 = 0x00000001
	EVNoAction                 uint32 = 0x00000003
	EVSeparator                uint32 = 0x00000004
	EVSCRTMVersion             uint32 = 0x00000008
	EVIPL                      uint32 = 0x0000000D
	EVEFIVariableDriverConfig  uint32 = 0x80000001
	EVEFIBootServicesApp       uint32 = 0x80000003
	EVEFIAction                uint32 = 0x80000007
	EVEFIPlatformFirmwareBlob  uint32 = 0x80000008
	EVEFIVariableAuthority     uint32 = 0x800000E0
	algSHA256                  uint16 = 0x000B
	specIDSignature                   = "Spec ID Event03\x00"
	startupLocalitySignature          = "StartupLocality\x00"
	efiGlobalVariableGUIDMixed        = "\x61\xdf\xe4\x8b\xca\x93\xd2\x11\xaa\x0d\x00\xe0\x98\x03\x2b\x8c"
)

// Bounds.
const (
	MaxLogSize       = 1 << 20
	MaxEvents        = 10000
	MaxEventDataSize = 64 << 10
	numPCRs          = 24
)

// ErrMalformed is wrapped by every parse error.
var ErrMalformed = errors.New("eventlog: malformed")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrMalformed, fmt.Sprintf(format, args...))
}

// Event is one parsed event with its SHA-256 digest.
type Event struct {
	PCR    int
	Type   uint32
	SHA256 []byte
	Data   []byte
}

// Log is a parsed event log.
type Log struct {
	Events []Event
	// Locality is the startup locality (initial value of PCR 0's last byte).
	Locality byte
}

type reader struct {
	b   []byte
	off int
}

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.off {
		return nil, malformed("%d bytes needed at offset %d, %d left", n, r.off, len(r.b)-r.off)
	}
	s := r.b[r.off : r.off+n]
	r.off += n
	return s, nil
}

func (r *reader) u32() (uint32, error) {
	b, err := r.take(4)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b), nil
}

func (r *reader) u16() (uint16, error) {
	b, err := r.take(2)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(b), nil
}

// Parse parses a crypto-agile (TCG2) event log that has a SHA-256 bank.
func Parse(b []byte) (*Log, error) {
	if len(b) > MaxLogSize {
		return nil, malformed("%d bytes exceeds %d", len(b), MaxLogSize)
	}
	r := &reader{b: b}
	// The first event is in the SHA-1 format and carries the Spec ID event.
	if _, err := r.u32(); err != nil {
		return nil, err
	}
	typ, err := r.u32()
	if err != nil {
		return nil, err
	}
	if typ != EVNoAction {
		return nil, malformed("first event type 0x%x is not EV_NO_ACTION", typ)
	}
	if _, err := r.take(20); err != nil {
		return nil, err
	}
	size, err := r.u32()
	if err != nil {
		return nil, err
	}
	if size > MaxEventDataSize {
		return nil, malformed("spec ID event of %d bytes", size)
	}
	spec, err := r.take(int(size))
	if err != nil {
		return nil, err
	}
	sizes, err := parseSpecID(spec)
	if err != nil {
		return nil, err
	}
	if _, ok := sizes[algSHA256]; !ok {
		return nil, malformed("log has no SHA-256 bank")
	}
	log := &Log{}
	for r.off < len(r.b) {
		if len(log.Events) >= MaxEvents {
			return nil, malformed("more than %d events", MaxEvents)
		}
		pcr, err := r.u32()
		if err != nil {
			return nil, err
		}
		typ, err := r.u32()
		if err != nil {
			return nil, err
		}
		count, err := r.u32()
		if err != nil {
			return nil, err
		}
		if count == 0 || int(count) > len(sizes) {
			return nil, malformed("event %d has %d digests, log declares %d banks", len(log.Events), count, len(sizes))
		}
		var sha []byte
		for range count {
			alg, err := r.u16()
			if err != nil {
				return nil, err
			}
			n, ok := sizes[alg]
			if !ok {
				return nil, malformed("event %d digest algorithm 0x%x not declared", len(log.Events), alg)
			}
			d, err := r.take(int(n))
			if err != nil {
				return nil, err
			}
			if alg == algSHA256 {
				sha = d
			}
		}
		dsize, err := r.u32()
		if err != nil {
			return nil, err
		}
		if dsize > MaxEventDataSize {
			return nil, malformed("event %d data of %d bytes", len(log.Events), dsize)
		}
		data, err := r.take(int(dsize))
		if err != nil {
			return nil, err
		}
		if typ == EVNoAction {
			if bytes.HasPrefix(data, []byte(startupLocalitySignature)) && len(data) == len(startupLocalitySignature)+1 && pcr == 0 {
				log.Locality = data[len(startupLocalitySignature)]
			}
			continue
		}
		if pcr >= numPCRs {
			return nil, malformed("event %d extends PCR %d", len(log.Events), pcr)
		}
		if sha == nil {
			return nil, malformed("event %d has no SHA-256 digest", len(log.Events))
		}
		log.Events = append(log.Events, Event{PCR: int(pcr), Type: typ, SHA256: sha, Data: data})
	}
	return log, nil
}

func parseSpecID(b []byte) (map[uint16]uint16, error) {
	r := &reader{b: b}
	sig, err := r.take(16)
	if err != nil {
		return nil, err
	}
	if string(sig) != specIDSignature {
		return nil, malformed("not a crypto-agile log (signature %q)", sig)
	}
	if _, err := r.take(8); err != nil { // platform class, version, errata, uintn size
		return nil, err
	}
	n, err := r.u32()
	if err != nil {
		return nil, err
	}
	if n == 0 || n > 8 {
		return nil, malformed("%d digest algorithms", n)
	}
	sizes := make(map[uint16]uint16, n)
	for range n {
		alg, err := r.u16()
		if err != nil {
			return nil, err
		}
		size, err := r.u16()
		if err != nil {
			return nil, err
		}
		if size == 0 || size > 64 {
			return nil, malformed("digest size %d for algorithm 0x%x", size, alg)
		}
		if alg == algSHA256 && size != 32 {
			return nil, malformed("SHA-256 digest size %d", size)
		}
		sizes[alg] = size
	}
	return sizes, nil
}

// Replay computes the SHA-256 PCR values the log produces, for every PCR
// it extends.
func (l *Log) Replay() map[int][]byte {
	pcrs := make(map[int][]byte)
	for _, e := range l.Events {
		cur, ok := pcrs[e.PCR]
		if !ok {
			cur = make([]byte, 32)
			if e.PCR == 0 {
				cur[31] = l.Locality
			}
		}
		h := sha256.New()
		h.Write(cur)
		h.Write(e.SHA256)
		pcrs[e.PCR] = h.Sum(nil)
	}
	return pcrs
}

// Check replays the log and compares every PCR it extends with quoted.
func (l *Log) Check(quoted map[int][]byte) error {
	for i, v := range l.Replay() {
		q, ok := quoted[i]
		if !ok {
			return fmt.Errorf("eventlog: PCR %d is extended by the log but not quoted", i)
		}
		if !bytes.Equal(q, v) {
			return fmt.Errorf("eventlog: PCR %d replays to %x, quoted %x", i, v, q)
		}
	}
	return nil
}

// SecureBoot returns the value of the SecureBoot UEFI variable measured
// into PCR 7, and whether it was measured. The event's digest must be the
// digest of its data, or the event is an error.
func (l *Log) SecureBoot() (enabled, measured bool, err error) {
	for i, e := range l.Events {
		if e.PCR != 7 || e.Type != EVEFIVariableDriverConfig {
			continue
		}
		name, data, err := parseVariable(e.Data)
		if err != nil {
			return false, false, fmt.Errorf("eventlog: event %d: %w", i, err)
		}
		if name != "SecureBoot" {
			continue
		}
		d := sha256.Sum256(e.Data)
		if !bytes.Equal(d[:], e.SHA256) {
			return false, false, fmt.Errorf("eventlog: event %d: SecureBoot digest does not match its data", i)
		}
		return len(data) == 1 && data[0] == 1, true, nil
	}
	return false, false, nil
}

// parseVariable parses a UEFI_VARIABLE_DATA of the EFI global variable GUID.
func parseVariable(b []byte) (string, []byte, error) {
	r := &reader{b: b}
	guid, err := r.take(16)
	if err != nil {
		return "", nil, err
	}
	nb, err := r.take(8)
	if err != nil {
		return "", nil, err
	}
	db, err := r.take(8)
	if err != nil {
		return "", nil, err
	}
	nameLen, dataLen := binary.LittleEndian.Uint64(nb), binary.LittleEndian.Uint64(db)
	if nameLen > 256 || dataLen > MaxEventDataSize {
		return "", nil, malformed("UEFI variable name %d, data %d", nameLen, dataLen)
	}
	nameRaw, err := r.take(int(nameLen) * 2)
	if err != nil {
		return "", nil, err
	}
	data, err := r.take(int(dataLen))
	if err != nil {
		return "", nil, err
	}
	if string(guid) != efiGlobalVariableGUIDMixed {
		return "", data, nil
	}
	u := make([]uint16, nameLen)
	for i := range u {
		u[i] = binary.LittleEndian.Uint16(nameRaw[2*i:])
	}
	return string(utf16.Decode(u)), data, nil
}
