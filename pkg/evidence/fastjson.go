package evidence

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// The bundle decoder has a fast path for the shape agents produce: an
// object of known keys whose values are ASCII strings (single-character
// escapes allowed),
// with tpm_quote and its pcrs as nested objects. Anything else (unknown
// keys, escapes, non-ASCII, duplicate keys, other JSON types) makes the
// fast path give up, and encoding/json decodes the input instead, so the
// accepted language and its meaning are exactly encoding/json's.

var errSlowPath = errors.New("bundle needs the general JSON decoder")

const (
	lsb = 0x0101010101010101
	msb = 0x8080808080808080
)

// special flags, in each byte lane, bytes that end or complicate a JSON
// string: '"', '\\', control characters and non-ASCII. The lowest flagged
// lane is exact; higher lanes may be false positives.
func special(x uint64) uint64 {
	q := x ^ (lsb * '"')
	bs := x ^ (lsb * '\\')
	return ((q-lsb) & ^q | (bs-lsb) & ^bs | (x-lsb*0x20) & ^x | x) & msb
}

type fastScanner struct {
	b   []byte
	off int
}

func (s *fastScanner) ws() {
	for s.off < len(s.b) {
		switch s.b[s.off] {
		case ' ', '\t', '\n', '\r':
			s.off++
		default:
			return
		}
	}
}

func (s *fastScanner) expect(c byte) bool {
	s.ws()
	if s.off < len(s.b) && s.b[s.off] == c {
		s.off++
		return true
	}
	return false
}

// str reads an ASCII string without \u escapes. Without escapes the
// result aliases the input.
func (s *fastScanner) str() ([]byte, error) {
	s.ws()
	if s.off >= len(s.b) || s.b[s.off] != '"' {
		return nil, errSlowPath
	}
	start := s.off + 1
	i := start
	for ; i+8 <= len(s.b); i += 8 {
		if m := special(binary.LittleEndian.Uint64(s.b[i:])); m != 0 {
			i += bits.TrailingZeros64(m) / 8
			goto found
		}
	}
	for ; i < len(s.b); i++ {
		if c := s.b[i]; c == '"' || c == '\\' || c < 0x20 || c >= 0x80 {
			goto found
		}
	}
	return nil, errSlowPath
found:
	if i >= len(s.b) {
		return nil, errSlowPath
	}
	if s.b[i] == '\\' {
		return s.escaped(start, i)
	}
	if s.b[i] != '"' {
		return nil, errSlowPath
	}
	s.off = i + 1
	return s.b[start:i:i], nil
}

// escaped continues a string from its first backslash at i, handling the
// single-character escapes (\n in PEM, mostly); \u escapes give up.
func (s *fastScanner) escaped(start, i int) ([]byte, error) {
	buf := make([]byte, 0, 2*(i-start)+64)
	buf = append(buf, s.b[start:i]...)
	for i < len(s.b) {
		c := s.b[i]
		switch {
		case c == '"':
			s.off = i + 1
			return buf, nil
		case c == '\\':
			if i+1 >= len(s.b) {
				return nil, errSlowPath
			}
			switch e := s.b[i+1]; e {
			case '"', '\\', '/':
				buf = append(buf, e)
			case 'n':
				buf = append(buf, '\n')
			case 'r':
				buf = append(buf, '\r')
			case 't':
				buf = append(buf, '\t')
			case 'b':
				buf = append(buf, '\b')
			case 'f':
				buf = append(buf, '\f')
			default:
				return nil, errSlowPath
			}
			i += 2
		case c < 0x20 || c >= 0x80:
			return nil, errSlowPath
		default:
			buf = append(buf, c)
			i++
		}
	}
	return nil, errSlowPath
}

// object reads an object, calling field for each key; field must consume
// the value. A repeated key gives up (encoding/json keeps the last one).
func (s *fastScanner) object(field func(key []byte) error) error {
	if !s.expect('{') {
		return errSlowPath
	}
	if s.expect('}') {
		return nil
	}
	var seen [][]byte
	for {
		k, err := s.str()
		if err != nil {
			return err
		}
		for _, p := range seen {
			if string(p) == string(k) {
				return errSlowPath
			}
		}
		seen = append(seen, k)
		if !s.expect(':') {
			return errSlowPath
		}
		if err := field(k); err != nil {
			return err
		}
		if s.expect(',') {
			continue
		}
		if s.expect('}') {
			return nil
		}
		return errSlowPath
	}
}

// decodeFast decodes the common bundle shape, or returns errSlowPath.
func decodeFast(raw []byte, f *fields) error {
	*f = fields{}
	s := &fastScanner{b: raw}
	str := func(dst *[]byte) error {
		v, err := s.str()
		*dst = v
		return err
	}
	err := s.object(func(key []byte) error {
		switch string(key) {
		case "format":
			return str(&f.format)
		case "platform":
			return str(&f.platform)
		case "vm_key":
			return str(&f.vmKey)
		case "nonce":
			return str(&f.nonce)
		case "collected_at":
			return str(&f.collectedAt)
		case "hcl_report":
			return str(&f.hcl)
		case "td_quote":
			return str(&f.tdQuote)
		case "vcek":
			return str(&f.vcek)
		case "event_log":
			return str(&f.eventLog)
		case "tpm_quote":
			f.hasQuote = true
			return s.object(func(key []byte) error {
				switch string(key) {
				case "attest":
					return str(&f.attest)
				case "signature":
					return str(&f.signature)
				case "pcr_bank":
					return str(&f.pcrBank)
				case "pcrs":
					f.hasPCRs = true
					f.pcrs = make([]pcrField, 0, 24)
					return s.object(func(idx []byte) error {
						v, err := s.str()
						f.pcrs = append(f.pcrs, pcrField{idx, v})
						return err
					})
				}
				return errSlowPath
			})
		}
		return errSlowPath
	})
	if err != nil {
		return err
	}
	s.ws()
	if s.off != len(s.b) {
		return errSlowPath
	}
	return nil
}
