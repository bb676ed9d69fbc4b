package normalize

import (
	"maps"
	"slices"
	"strings"
	"unicode/utf8"
)

// Azure's bounds on a resource's tags (learn.microsoft.com, "Use tags to
// organize your Azure resources": limitations).
const (
	MaxTags        = 50
	MaxTagNameLen  = 512 // characters
	MaxTagValueLen = 256 // characters
)

// TagsBounded counts what Tags left out or cut short.
type TagsBounded struct {
	DroppedOverMax  int // tags beyond MaxTags, by name order
	DroppedLongName int // names longer than MaxTagNameLen (a cut name would be another tag)
	DroppedInvalid  int // empty names, and names that read as another's once invalid UTF-8 is replaced
	TrimmedValues   int // values cut to MaxTagValueLen
}

// Any reports whether anything was dropped or trimmed.
func (b TagsBounded) Any() bool { return b != TagsBounded{} }

// Tags returns ARM's tags of a resource as the inventory keeps them,
// treating them as outside input bounded as Azure bounds them: invalid
// UTF-8 replaced, empty names and names longer than MaxTagNameLen
// dropped, values longer than MaxTagValueLen trimmed, and at most MaxTags
// tags kept (the first by name, so that the same tags always keep the
// same ones). Names keep ARM's case; a nil value is an empty one. It
// returns nil for no tags.
func Tags(in map[string]*string) (map[string]string, TagsBounded) {
	var b TagsBounded
	if len(in) == 0 {
		return nil, b
	}
	out := make(map[string]string, min(len(in), MaxTags))
	for _, raw := range slices.Sorted(maps.Keys(in)) {
		name := strings.ToValidUTF8(raw, "\uFFFD")
		switch {
		case name == "":
			b.DroppedInvalid++
			continue
		case utf8.RuneCountInString(name) > MaxTagNameLen:
			b.DroppedLongName++
			continue
		case len(out) == MaxTags:
			b.DroppedOverMax++
			continue
		}
		if _, dup := out[name]; dup {
			b.DroppedInvalid++ // the first of the names that read alike stays
			continue
		}
		value := ""
		if v := in[raw]; v != nil {
			value = strings.ToValidUTF8(*v, "\uFFFD")
		}
		if utf8.RuneCountInString(value) > MaxTagValueLen {
			value = cutRunes(value, MaxTagValueLen)
			b.TrimmedValues++
		}
		out[name] = value
	}
	if len(out) == 0 {
		return nil, b
	}
	return out, b
}

// cutRunes returns the first n runes of s.
func cutRunes(s string, n int) string {
	i := 0
	for j := range s {
		if i == n {
			return s[:j]
		}
		i++
	}
	return s
}
