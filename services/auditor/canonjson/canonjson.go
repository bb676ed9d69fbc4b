// Package canonjson produces the canonical form of JSON text defined by
// RFC 8785 (JSON Canonicalization Scheme): object members sorted by their
// UTF-16 code units, no insignificant whitespace, numbers in the shortest
// ECMAScript form, and strings with the minimal escaping.
package canonjson

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/vigil-cc/vigil/pkg/jsonstr"
)

// MaxDepth bounds the nesting of arrays and objects.
const MaxDepth = 128

// ErrInvalid is returned for input that is not canonicalizable JSON: a
// syntax error, a duplicate object member, a number outside the range of
// IEEE 754 doubles, invalid UTF-8, or nesting deeper than MaxDepth.
var ErrInvalid = errors.New("canonjson: invalid input")

// Transform returns the canonical form of the JSON text in.
func Transform(in []byte) ([]byte, error) {
	return AppendTransform(make([]byte, 0, len(in)), in, nil)
}

// AppendTransform appends the canonical form of in to dst. If top is not
// nil and in is an object, top is called with each member of that object
// (not of nested ones): its name, decoded, and its canonical value. Both
// slices are only valid during the call.
func AppendTransform(dst, in []byte, top func(name, value []byte)) ([]byte, error) {
	p := parserPool.Get().(*parser)
	defer func() {
		p.in, p.top = nil, nil
		parserPool.Put(p)
	}()
	p.in, p.pos, p.top = in, 0, top
	p.skipSpace()
	out, err := p.value(dst, 0)
	if err != nil {
		return dst, err
	}
	p.skipSpace()
	if p.pos != len(p.in) {
		return dst, p.errorf("trailing data")
	}
	return out, nil
}

var parserPool = sync.Pool{New: func() any { return new(parser) }}

type parser struct {
	in  []byte
	pos int
	top func(name, value []byte)
	// Reused per nesting depth: an object's members and a copy of their
	// values while they are put in order.
	members [][]member
	scratch [][]byte
	names   [][]byte
	strBuf  []byte
	// strShared says the last str result is in strBuf, not the input.
	strShared bool
}

func (p *parser) errorf(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrInvalid, p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) skipSpace() {
	for p.pos < len(p.in) {
		switch p.in[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value(dst []byte, depth int) ([]byte, error) {
	if p.pos >= len(p.in) {
		return dst, p.errorf("unexpected end of input")
	}
	switch c := p.in[p.pos]; {
	case c == '{':
		return p.object(dst, depth+1)
	case c == '[':
		return p.array(dst, depth+1)
	case c == '"':
		start := p.pos
		s, err := p.str()
		if err != nil {
			return dst, err
		}
		if !p.strShared {
			// No escapes: the input is already in canonical form.
			return append(dst, p.in[start:p.pos]...), nil
		}
		return jsonstr.AppendQuote(dst, s), nil
	case c == 't':
		return p.literal(dst, "true")
	case c == 'f':
		return p.literal(dst, "false")
	case c == 'n':
		return p.literal(dst, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.number(dst)
	default:
		return dst, p.errorf("unexpected character %q", c)
	}
}

func (p *parser) literal(dst []byte, lit string) ([]byte, error) {
	if !bytes.HasPrefix(p.in[p.pos:], []byte(lit)) {
		return dst, p.errorf("invalid literal")
	}
	p.pos += len(lit)
	return append(dst, lit...), nil
}

// member is one object member while its object is canonicalized. It holds
// no pointers, so sorting members is cheap: the name is in the input, or
// (when it had escapes) in the parser's names buffer for its depth.
type member struct {
	prefix             uint64 // first 8 bytes of an ASCII name, big-endian, zero padded
	nameStart, nameEnd int
	escaped, ascii     bool
	start, end         int // the value, in dst relative to the object's start
}

func (p *parser) object(dst []byte, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, p.errorf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // '{'
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == '}' {
		p.pos++
		return append(dst, '{', '}'), nil
	}
	for len(p.members) <= depth {
		p.members = append(p.members, nil)
		p.scratch = append(p.scratch, nil)
		p.names = append(p.names, nil)
	}
	ms := p.members[depth][:0]
	names := p.names[depth][:0]
	// Member values are canonicalized into this depth's scratch buffer,
	// then appended to dst in sorted order.
	values := p.scratch[depth][:0]
	for {
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != '"' {
			return dst, p.errorf("expected object member name")
		}
		raw := p.pos + 1
		name, err := p.str()
		if err != nil {
			return dst, err
		}
		m := member{nameStart: raw, nameEnd: raw + len(name), ascii: isASCII(name)}
		if p.strShared { // decoded from escapes into the shared buffer
			m.escaped, m.nameStart = true, len(names)
			names = append(names, name...)
			m.nameEnd = len(names)
			// The shared buffer is reused for the value's strings.
			name = names[m.nameStart:m.nameEnd]
		}
		if m.ascii {
			if len(name) >= 8 {
				m.prefix = binary.BigEndian.Uint64(name)
			} else {
				for i := range len(name) {
					m.prefix |= uint64(name[i]) << (56 - 8*i)
				}
			}
		}
		p.skipSpace()
		if p.pos >= len(p.in) || p.in[p.pos] != ':' {
			return dst, p.errorf("expected ':'")
		}
		p.pos++
		p.skipSpace()
		start := len(values)
		if values, err = p.value(values, depth); err != nil {
			p.scratch[depth] = values[:0]
			return dst, err
		}
		if depth == 1 && p.top != nil {
			p.top(name, values[start:])
		}
		m.start, m.end = start, len(values)
		ms = append(ms, m)
		p.skipSpace()
		if p.pos >= len(p.in) {
			return dst, p.errorf("unexpected end of object")
		}
		if p.in[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.in[p.pos] == '}' {
			p.pos++
			break
		}
		return dst, p.errorf("expected ',' or '}'")
	}
	nameOf := func(m *member) []byte {
		if m.escaped {
			return names[m.nameStart:m.nameEnd]
		}
		return p.in[m.nameStart:m.nameEnd]
	}
	compare := func(a, b *member) int {
		if a.ascii && b.ascii {
			if a.prefix != b.prefix {
				return cmp.Compare(a.prefix, b.prefix)
			}
			return bytes.Compare(nameOf(a), nameOf(b))
		}
		return compareUTF16(nameOf(a), nameOf(b))
	}
	if len(ms) <= 16 {
		// Insertion sort: objects are small, and their members often
		// partly in order already.
		for i := 1; i < len(ms); i++ {
			for j := i; j > 0 && compare(&ms[j], &ms[j-1]) < 0; j-- {
				ms[j], ms[j-1] = ms[j-1], ms[j]
			}
		}
	} else {
		slices.SortFunc(ms, func(a, b member) int { return compare(&a, &b) })
	}
	for i := 1; i < len(ms); i++ {
		if bytes.Equal(nameOf(&ms[i]), nameOf(&ms[i-1])) {
			return dst, fmt.Errorf("%w: duplicate object member %q", ErrInvalid, nameOf(&ms[i]))
		}
	}
	dst = append(dst, '{')
	for i, m := range ms {
		if i > 0 {
			dst = append(dst, ',')
		}
		if m.escaped {
			dst = jsonstr.AppendQuote(dst, nameOf(&m))
		} else {
			dst = append(dst, p.in[m.nameStart-1:m.nameEnd+1]...) // with its quotes
		}
		dst = append(dst, ':')
		dst = append(dst, values[m.start:m.end]...)
	}
	p.scratch[depth] = values
	p.names[depth] = names[:0]
	p.members[depth] = ms[:0]
	return append(dst, '}'), nil
}

func (p *parser) array(dst []byte, depth int) ([]byte, error) {
	if depth > MaxDepth {
		return dst, p.errorf("nesting deeper than %d", MaxDepth)
	}
	p.pos++ // '['
	dst = append(dst, '[')
	p.skipSpace()
	if p.pos < len(p.in) && p.in[p.pos] == ']' {
		p.pos++
		return append(dst, ']'), nil
	}
	for first := true; ; first = false {
		if !first {
			dst = append(dst, ',')
		}
		p.skipSpace()
		var err error
		if dst, err = p.value(dst, depth); err != nil {
			return dst, err
		}
		p.skipSpace()
		if p.pos >= len(p.in) {
			return dst, p.errorf("unexpected end of array")
		}
		if p.in[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.in[p.pos] == ']' {
			p.pos++
			return append(dst, ']'), nil
		}
		return dst, p.errorf("expected ',' or ']'")
	}
}

// str parses a JSON string at p.pos and returns its decoded value: a
// slice of the input when the string has no escapes, else of a buffer
// reused by the next call. Strings must be valid Unicode (RFC 8785 3.2.2:
// no invalid UTF-8, no unpaired surrogate escapes).
func (p *parser) str() ([]byte, error) {
	s, end, copied, err := jsonstr.Unquote(p.strBuf, p.in, p.pos, jsonstr.Strict)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	p.pos, p.strShared = end, copied
	if copied {
		p.strBuf = s[:0]
	}
	return s, nil
}

func (p *parser) number(dst []byte) ([]byte, error) {
	start := p.pos
	if p.in[p.pos] == '-' {
		p.pos++
	}
	digits := func() int {
		n := 0
		for p.pos < len(p.in) && p.in[p.pos] >= '0' && p.in[p.pos] <= '9' {
			p.pos++
			n++
		}
		return n
	}
	if p.pos < len(p.in) && p.in[p.pos] == '0' {
		p.pos++
	} else if digits() == 0 {
		return dst, p.errorf("invalid number")
	}
	if p.pos < len(p.in) && p.in[p.pos] == '.' {
		p.pos++
		if digits() == 0 {
			return dst, p.errorf("invalid number")
		}
	}
	if p.pos < len(p.in) && (p.in[p.pos] == 'e' || p.in[p.pos] == 'E') {
		p.pos++
		if p.pos < len(p.in) && (p.in[p.pos] == '+' || p.in[p.pos] == '-') {
			p.pos++
		}
		if digits() == 0 {
			return dst, p.errorf("invalid number")
		}
	}
	lit := p.in[start:p.pos]
	if isSmallInt(lit) {
		// An integer below 2^53 without a fraction or exponent is already
		// in its canonical form (but -0 is 0).
		if len(lit) == 2 && lit[0] == '-' && lit[1] == '0' {
			return append(dst, '0'), nil
		}
		return append(dst, lit...), nil
	}
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil || math.IsInf(f, 0) {
		return dst, p.errorf("number %s out of range", p.in[start:p.pos])
	}
	return AppendNumber(dst, f), nil
}

// isSmallInt reports whether a valid JSON number literal is an integer of
// at most 15 digits (so exactly representable and printed as is).
func isSmallInt(lit []byte) bool {
	digits := lit
	if digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) > 15 {
		return false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// AppendNumber appends f in the ECMAScript Number.prototype.toString form
// required by RFC 8785 section 3.2.2.3.
func AppendNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0') // also for -0
	}
	abs := math.Abs(f)
	if abs >= 1e-6 && abs < 1e21 {
		return strconv.AppendFloat(dst, f, 'f', -1, 64)
	}
	// Exponent form: Go writes e-07 / e+21; ECMAScript writes e-7 / e+21.
	b := strconv.AppendFloat(nil, f, 'e', -1, 64)
	i := bytes.IndexByte(b, 'e')
	mant, exp := b[:i], b[i+1:]
	sign := exp[0]
	exp = bytes.TrimLeft(exp[1:], "0")
	dst = append(dst, mant...)
	dst = append(dst, 'e', sign)
	return append(dst, exp...)
}

// AppendString appends s, which must be valid UTF-8, as a JSON string with
// the escaping of RFC 8785 section 3.2.2.2.
func AppendString(dst []byte, s string) []byte { return jsonstr.AppendQuote(dst, s) }

// compareUTF16 orders names by their UTF-16 code units (RFC 8785 3.2.3).
func compareUTF16(a, b []byte) int {
	if isASCII(a) && isASCII(b) {
		return bytes.Compare(a, b)
	}
	ua, ub := utf16.Encode([]rune(string(a))), utf16.Encode([]rune(string(b)))
	return slices.Compare(ua, ub)
}

func isASCII(s []byte) bool {
	for ; len(s) >= 8; s = s[8:] {
		if binary.LittleEndian.Uint64(s)&0x8080808080808080 != 0 {
			return false
		}
	}
	for _, c := range s {
		if c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
