package jsonstr

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"unicode/utf16"
	"unicode/utf8"
)

// Mode is what Unquote does with what a literal may hold but a string may
// not: bytes that are not UTF-8 and \u escapes of UTF-16 surrogates that
// do not form a pair.
type Mode uint8

const (
	// Replace decodes as encoding/json does: each such byte and each such
	// escape becomes U+FFFD.
	Replace Mode = iota
	// Strict refuses them, as RFC 8785 and I-JSON (RFC 7493) require.
	Strict
)

// SyntaxError is a literal that is not a JSON string, or (Strict) not one
// of valid Unicode.
type SyntaxError struct {
	Offset int // of the offending byte in the input; its length when the literal is cut short
	Msg    string
}

func (e *SyntaxError) Error() string { return fmt.Sprintf("offset %d: %s", e.Offset, e.Msg) }

func syntaxErr(off int, msg string) error { return &SyntaxError{Offset: off, Msg: msg} }

// Scan returns the offset just after the string literal starting at
// b[i], which must be '"'. It checks the literal as encoding/json's
// scanner does: every escape is one of \" \\ \/ \b \f \n \r \t \uXXXX and
// no byte is a control character (below 0x20). Like encoding/json's
// scanner, it does not check UTF-8.
func Scan(b []byte, i int) (int, error) { return scan(b, i+1) }

// scan is Scan from b[j], inside the literal.
func scan(b []byte, j int) (int, error) {
	for {
		j += plainLen(b[j:])
		if j >= len(b) {
			return 0, syntaxErr(len(b), "unterminated string")
		}
		switch c := b[j]; {
		case c == '"':
			return j + 1, nil
		case c == '\\':
			_, n, err := escape(b, j)
			if err != nil {
				return 0, err
			}
			j += n
		case c < 0x20:
			return 0, syntaxErr(j, "control character in string")
		default: // not ASCII
			j++
		}
	}
}

// Unquote decodes the string literal starting at b[i], which must be '"'.
// It returns the string, the offset just after the literal and whether the
// string is a copy. It is not when the literal needs no decoding (no
// escapes, and valid UTF-8): the string is then b's bytes between the
// quotes (with its capacity clipped), and, since the literal has no
// escapes either, it is already in the shortest form AppendQuote writes.
// A copy is appended to buf[:0]; pass nil or a buffer to reuse.
//
// The literals accepted are Scan's; Replace decodes them exactly as
// encoding/json does, Strict refuses invalid UTF-8 and unpaired
// surrogates instead of replacing them.
func Unquote(buf, b []byte, i int, mode Mode) (s []byte, end int, copied bool, err error) {
	start := i + 1
	j := start
	for {
		j += plainLen(b[j:])
		if j >= len(b) {
			return nil, 0, false, syntaxErr(len(b), "unterminated string")
		}
		c := b[j]
		if c == '"' {
			return b[start:j:j], j + 1, false, nil
		}
		if c < utf8.RuneSelf {
			break // an escape or a control character
		}
		r, n := utf8.DecodeRune(b[j:])
		if r == utf8.RuneError && n == 1 {
			break
		}
		j += n
	}
	// The literal needs decoding: find its end (and check its grammar)
	// first, so the copy is allocated once.
	end, err = scan(b, j)
	if err != nil {
		return nil, 0, false, err
	}
	s = buf[:0]
	if need := end - start; cap(s) < need {
		s = make([]byte, 0, need)
	}
	s = append(s, b[start:j]...)
	for j < end-1 {
		switch c := b[j]; {
		case c == '\\':
			r, n, _ := escape(b, j) // scan checked it
			j += n
			if r < utf8.RuneSelf {
				s = append(s, byte(r))
				continue
			}
			if utf16.IsSurrogate(r) {
				// A pair is a high surrogate and a low one, each escaped.
				r2 := rune(-1)
				if b[j] == '\\' && b[j+1] == 'u' {
					r2, _, _ = escape(b, j)
				}
				if r < 0xdc00 && r2 >= 0xdc00 && r2 <= 0xdfff {
					r, j = utf16.DecodeRune(r, r2), j+6
				} else if mode == Strict {
					return nil, 0, false, syntaxErr(j-n, "unpaired UTF-16 surrogate")
				} else {
					r = utf8.RuneError
				}
			}
			s = utf8.AppendRune(s, r)
		case c < utf8.RuneSelf:
			n := max(plainLen(b[j:end-1]), 1)
			s = append(s, b[j:j+n]...)
			j += n
		default:
			r, n := utf8.DecodeRune(b[j : end-1])
			if r == utf8.RuneError && n == 1 {
				if mode == Strict {
					return nil, 0, false, syntaxErr(j, "invalid UTF-8 in string")
				}
				s = utf8.AppendRune(s, utf8.RuneError)
			} else {
				s = append(s, b[j:j+n]...)
			}
			j += n
		}
	}
	return s, end, true, nil
}

// escape decodes the escape at b[j] ('\\'): the character, or for \u the
// UTF-16 code unit, and the escape's length.
func escape(b []byte, j int) (rune, int, error) {
	if j+1 >= len(b) {
		return 0, 0, syntaxErr(len(b), "unterminated string")
	}
	switch e := b[j+1]; e {
	case '"', '\\', '/':
		return rune(e), 2, nil
	case 'b':
		return '\b', 2, nil
	case 'f':
		return '\f', 2, nil
	case 'n':
		return '\n', 2, nil
	case 'r':
		return '\r', 2, nil
	case 't':
		return '\t', 2, nil
	case 'u':
		if j+6 > len(b) {
			return 0, 0, syntaxErr(len(b), `short \u escape`)
		}
		var r rune
		for k, c := range b[j+2 : j+6] {
			var d byte
			switch {
			case c >= '0' && c <= '9':
				d = c - '0'
			case c >= 'a' && c <= 'f':
				d = c - 'a' + 10
			case c >= 'A' && c <= 'F':
				d = c - 'A' + 10
			default:
				return 0, 0, syntaxErr(j+2+k, `invalid \u escape`)
			}
			r = r<<4 | rune(d)
		}
		return r, 6, nil
	}
	return 0, 0, syntaxErr(j+1, fmt.Sprintf("invalid escape %q", "\\"+string(b[j+1])))
}

// plainLen returns the length of b's longest prefix of bytes a literal
// holds as they are and that need no UTF-8 check: ASCII other than '"',
// '\\' and control characters. It tests eight bytes at a time.
func plainLen(b []byte) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		q, bs := x^('"'*ones), x^('\\'*ones)
		// The lowest flagged lane is exact; higher ones may be false
		// positives (borrows), and are not looked at.
		if m := ((q-ones)&^q | (bs-ones)&^bs | (x-0x20*ones)&^x | x) & highs; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(b); i++ {
		if c := b[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			break
		}
	}
	return i
}

const hexDigits = "0123456789abcdef"

// AppendQuote appends s, which must be valid UTF-8, as a string literal
// with the minimal escaping of RFC 8785 section 3.2.2.2: \" and \\, \b \f
// \n \r \t, \u00XX (lower-case hex) for the other control characters, and
// every other character as it is. Unlike encoding/json's default, it does
// not escape <, > and & (HTML), nor U+2028 and U+2029.
func AppendQuote[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}
