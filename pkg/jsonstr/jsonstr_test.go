package jsonstr

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestUnquote: each vector in both modes, and in Replace mode against
// encoding/json, which must agree on the value and on the refusals.
func TestUnquote(t *testing.T) {
	const refused = "\x00refused" // want: the literal is refused
	for _, tc := range []struct {
		name, lit       string
		replace, strict string // want
		copied          bool   // whether the value is a copy (when accepted)
	}{
		{"plain", `"abc"`, "abc", "abc", false},
		{"empty", `""`, "", "", false},
		{"long plain", `"abcdefghijklmnopqrstuvwxyz"`, "abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz", false},
		{"short escapes", `"\"\\\/\b\f\n\r\t"`, "\"\\/\b\f\n\r\t", "\"\\/\b\f\n\r\t", true},
		{"escape after eight plain bytes", `"abcdefghij\nk"`, "abcdefghij\nk", "abcdefghij\nk", true},
		{"PEM line break", `"-----BEGIN CERTIFICATE-----\nMIIF"`, "-----BEGIN CERTIFICATE-----\nMIIF", "-----BEGIN CERTIFICATE-----\nMIIF", true},
		{"\\u escape", `"\u00e9"`, "é", "é", true},
		{"\\u upper-case hex", `"\u20AC"`, "€", "€", true},
		{"\\u0000", `"a\u0000b"`, "a\x00b", "a\x00b", true},
		{"\\u escape of ASCII", `"\u0041"`, "A", "A", true},
		{"surrogate pair", `"\ud83d\ude00"`, "😀", "😀", true},
		{"lone high surrogate", `"\ud83d"`, "\uFFFD", refused, true},
		{"lone low surrogate", `"\ude00"`, "\uFFFD", refused, true},
		{"high surrogate, then a letter", `"\ud83dx"`, "\uFFFDx", refused, true},
		{"high surrogate, then an escape", `"\ud83d\n"`, "\uFFFD\n", refused, true},
		{"high surrogate, then \\u of no surrogate", `"\ud83d\u0041"`, "\uFFFDA", refused, true},
		{"two high surrogates, then a low one", `"\ud83d\ud83d\ude00"`, "\uFFFD😀", refused, true},
		{"low then high surrogate", `"\ude00\ud83d"`, "\uFFFD\uFFFD", refused, true},
		{"UTF-8", `"é😀€"`, "é😀€", "é😀€", false},
		{"invalid UTF-8", "\"a\xffb\"", "a\uFFFDb", refused, true},
		{"truncated UTF-8", "\"\xe2\x82\"", "\uFFFD\uFFFD", refused, true},
		{"UTF-8 of a surrogate", "\"\xed\xa0\x80\"", "\uFFFD\uFFFD\uFFFD", refused, true},
		{"invalid UTF-8 after an escape", "\"\\n\xff\"", "\n\uFFFD", refused, true},
		{"DEL", "\"\x7f\"", "\x7f", "\x7f", false},
		{"HTML is not special", `"<a href='x'>&amp;</a>"`, "<a href='x'>&amp;</a>", "<a href='x'>&amp;</a>", false},
		{"U+2028 is not special", "\"\u2028\\u2029\"", "\u2028\u2029", "\u2028\u2029", true},
		{"control character", "\"a\x01b\"", refused, refused, false},
		{"raw newline", "\"a\nb\"", refused, refused, false},
		{"control character after an escape", "\"\\n\x1f\"", refused, refused, false},
		{"unknown escape", `"\q"`, refused, refused, false},
		{"\\x escape", `"\x41"`, refused, refused, false},
		{"short \\u", `"\u12"`, refused, refused, false},
		{"\\u with a non-hex digit", `"\u12G4"`, refused, refused, false},
		{"unterminated", `"abc`, refused, refused, false},
		{"unterminated after an escape", `"abc\n`, refused, refused, false},
		{"unterminated in an escape", `"abc\`, refused, refused, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lit := []byte(tc.lit)
			for _, m := range []struct {
				mode Mode
				want string
			}{{Replace, tc.replace}, {Strict, tc.strict}} {
				s, end, copied, err := Unquote(nil, lit, 0, m.mode)
				if m.want == refused {
					var se *SyntaxError
					if !errors.As(err, &se) {
						t.Fatalf("mode %d: %q, %v; want a *SyntaxError", m.mode, s, err)
					}
					continue
				}
				if err != nil || string(s) != m.want || end != len(lit) || copied != tc.copied {
					t.Fatalf("mode %d: %q end %d copied %v %v; want %q end %d copied %v", m.mode, s, end, copied, err, m.want, len(lit), tc.copied)
				}
			}
			var std string
			stdErr := json.Unmarshal(lit, &std)
			if (stdErr != nil) != (tc.replace == refused) || (stdErr == nil && std != tc.replace) {
				t.Fatalf("encoding/json: %q, %v; the vector says %q", std, stdErr, tc.replace)
			}
			end, err := Scan(lit, 0)
			if (err == nil) != json.Valid(lit) || (err == nil && end != len(lit)) {
				t.Fatalf("Scan: %d, %v; json.Valid %v", end, err, json.Valid(lit))
			}
		})
	}
}

// TestUnquoteWithin: a literal inside other text ends at its closing quote,
// and a copy reuses buf.
func TestUnquoteWithin(t *testing.T) {
	in := []byte(`{"k\u0041y": "v"}`)
	buf := make([]byte, 0, 64)
	s, end, copied, err := Unquote(buf, in, 1, Strict)
	if err != nil || string(s) != "kAy" || end != 11 || !copied || &s[:1][0] != &buf[:1][0] {
		t.Fatalf("%q %d %v %v", s, end, copied, err)
	}
	if end, err := Scan(in, 13); err != nil || end != 16 {
		t.Fatalf("Scan: %d %v", end, err)
	}
}

func TestAppendQuote(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", `"plain"`},
		{"", `""`},
		{`a"b\c/`, `"a\"b\\c/"`},
		{"\b\f\n\r\t", `"\b\f\n\r\t"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"\x7f", "\"\x7f\""},
		{"<a href='x'>&amp;</a>", `"<a href='x'>&amp;</a>"`}, // no HTML escaping
		{"\u2028\u2029", "\"\u2028\u2029\""},
		{"é😀€", `"é😀€"`},
	} {
		got := AppendQuote([]byte("x"), tc.in)
		if string(got) != "x"+tc.want {
			t.Errorf("AppendQuote(%q) = %s, want %s", tc.in, got[1:], tc.want)
		}
		if b := AppendQuote(nil, []byte(tc.in)); string(b) != tc.want {
			t.Errorf("AppendQuote([]byte(%q)) = %s, want %s", tc.in, b, tc.want)
		}
		var back string
		if err := json.Unmarshal([]byte(tc.want), &back); err != nil || back != tc.in {
			t.Errorf("%s does not decode to %q: %q %v", tc.want, tc.in, back, err)
		}
	}
}

// TestPlainLen checks the eight-byte test against the byte rule for every
// byte value in every position.
func TestPlainLen(t *testing.T) {
	plain := func(c byte) bool { return c >= 0x20 && c < utf8.RuneSelf && c != '"' && c != '\\' }
	for _, size := range []int{8, 11} {
		for pos := range size {
			for c := range 256 {
				b := bytes.Repeat([]byte{'a'}, size)
				b[pos] = byte(c)
				want := size
				if !plain(byte(c)) {
					want = pos
				}
				if got := plainLen(b); got != want {
					t.Fatalf("plainLen with %#x at %d of %d = %d, want %d", c, pos, size, got, want)
				}
			}
		}
	}
}

// FuzzUnquote checks Scan and Unquote against encoding/json: Replace
// decodes exactly the literals it accepts, to the same string; Strict
// accepts a subset, to the same string, valid UTF-8; and AppendQuote of
// the string is a literal that decodes back to it.
func FuzzUnquote(f *testing.F) {
	for _, s := range []string{`"abc"`, `"\ud83d\ude00"`, `"\ud83d"`, "\"\xff\"", `"\u12"`, `"a\"b"`, "\"abcdefghij\\n\x01\"", `"é"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, lit []byte) {
		if len(lit) == 0 || lit[0] != '"' || len(bytes.TrimRight(lit, " \t\r\n")) != len(lit) {
			return // not a literal alone (json.Valid allows white space around it)
		}
		valid := json.Valid(lit)
		end, scanErr := Scan(lit, 0)
		if whole := scanErr == nil && end == len(lit); whole != valid {
			t.Fatalf("Scan(%q) = %d, %v; json.Valid %v", lit, end, scanErr, valid)
		}
		s, end, _, err := Unquote(nil, lit, 0, Replace)
		if (err == nil) != (scanErr == nil) {
			t.Fatalf("Unquote(%q): %v, Scan: %v", lit, err, scanErr)
		}
		if !valid {
			return
		}
		var std string
		if err := json.Unmarshal(lit, &std); err != nil || end != len(lit) || string(s) != std {
			t.Fatalf("Unquote(%q) = %q; encoding/json %q, %v", lit, s, std, err)
		}
		if strict, _, _, err := Unquote(nil, lit, 0, Strict); err == nil {
			if string(strict) != std || !utf8.Valid(strict) {
				t.Fatalf("Strict(%q) = %q, want %q", lit, strict, std)
			}
		} else if !strings.ContainsRune(std, utf8.RuneError) {
			t.Fatalf("Strict refused %q (%v) though it decodes without U+FFFD", lit, err)
		}
		if !utf8.ValidString(std) {
			return
		}
		q := AppendQuote(nil, std)
		if back, _, _, err := Unquote(nil, q, 0, Strict); err != nil || string(back) != std {
			t.Fatalf("AppendQuote(%q) = %s, decodes to %q, %v", std, q, back, err)
		}
	})
}
