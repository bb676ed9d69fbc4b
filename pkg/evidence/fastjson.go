package evidence

import (
	"errors"

	"github.com/vigil-cc/vigil/pkg/jsonstr"
)

// The bundle decoder has a fast path for the shape agents produce: an
// object of known keys whose values are strings, with tpm_quote and its
// pcrs as nested objects. Anything else (unknown keys, duplicate keys,
// other JSON types, invalid string literals) makes the fast path give up,
// and encoding/json decodes the input instead. Strings are decoded by
// jsonstr.Unquote in Replace mode, which decodes exactly as encoding/json
// does (escapes, invalid UTF-8, unpaired surrogates), so the accepted
// language and its meaning are exactly encoding/json's.

var errSlowPath = errors.New("bundle needs the general JSON decoder")

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

// str reads a string: a slice of the input when the literal needs no
// decoding, else a new copy.
func (s *fastScanner) str() ([]byte, error) {
	s.ws()
	if s.off >= len(s.b) || s.b[s.off] != '"' {
		return nil, errSlowPath
	}
	v, end, _, err := jsonstr.Unquote(nil, s.b, s.off, jsonstr.Replace)
	if err != nil {
		return nil, errSlowPath
	}
	s.off = end
	return v, nil
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
