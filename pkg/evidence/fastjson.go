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

// str reads an ASCII string without \u escapes.
func (s *fastScanner) str() (string, error) {
	s.ws()
	if s.off >= len(s.b) || s.b[s.off] != '"' {
		return "", errSlowPath
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
	return "", errSlowPath
found:
	if i >= len(s.b) {
		return "", errSlowPath
	}
	if s.b[i] == '\\' {
		return s.escaped(start, i)
	}
	if s.b[i] != '"' {
		return "", errSlowPath
	}
	s.off = i + 1
	return string(s.b[start:i]), nil
}

// escaped continues a string from its first backslash at i, handling the
// single-character escapes (\n in PEM, mostly); \u escapes give up.
func (s *fastScanner) escaped(start, i int) (string, error) {
	buf := make([]byte, 0, 2*(i-start)+64)
	buf = append(buf, s.b[start:i]...)
	for i < len(s.b) {
		c := s.b[i]
		switch {
		case c == '"':
			s.off = i + 1
			return string(buf), nil
		case c == '\\':
			if i+1 >= len(s.b) {
				return "", errSlowPath
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
				return "", errSlowPath
			}
			i += 2
		case c < 0x20 || c >= 0x80:
			return "", errSlowPath
		default:
			buf = append(buf, c)
			i++
		}
	}
	return "", errSlowPath
}

// object reads an object, calling field for each key; field must consume
// the value. Duplicate keys give up.
func (s *fastScanner) object(field func(key string) error) error {
	if !s.expect('{') {
		return errSlowPath
	}
	if s.expect('}') {
		return nil
	}
	seen := make(map[string]bool, 12)
	for {
		k, err := s.str()
		if err != nil {
			return err
		}
		if seen[k] {
			return errSlowPath
		}
		seen[k] = true
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

// decodeWireFast decodes the common bundle shape, or returns errSlowPath.
func decodeWireFast(raw []byte, w *wireBundle) error {
	s := &fastScanner{b: raw}
	str := func(dst *string) error {
		v, err := s.str()
		*dst = v
		return err
	}
	err := s.object(func(key string) error {
		switch key {
		case "format":
			return str(&w.Format)
		case "platform":
			return str(&w.Platform)
		case "vm_key":
			return str(&w.VMKey)
		case "nonce":
			return str(&w.Nonce)
		case "collected_at":
			return str(&w.CollectedAt)
		case "hcl_report":
			return str(&w.HCLReport)
		case "td_quote":
			return str(&w.TDQuote)
		case "vcek":
			return str(&w.VCEK)
		case "event_log":
			return str(&w.EventLog)
		case "tpm_quote":
			q := &wireQuote{}
			w.TPMQuote = q
			return s.object(func(key string) error {
				switch key {
				case "attest":
					return str(&q.Attest)
				case "signature":
					return str(&q.Signature)
				case "pcr_bank":
					return str(&q.PCRBank)
				case "pcrs":
					q.PCRs = make(map[string]string, 24)
					return s.object(func(idx string) error {
						v, err := s.str()
						q.PCRs[idx] = v
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
