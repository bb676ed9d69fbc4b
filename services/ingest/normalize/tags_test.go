package normalize

import (
	"fmt"
	"maps"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestTags(t *testing.T) {
	ptr := func(s string) *string { return &s }
	many := map[string]*string{}
	want60 := map[string]string{}
	for i := range 60 {
		name := fmt.Sprintf("t%02d", i)
		many[name] = ptr("v")
		if i < MaxTags {
			want60[name] = "v"
		}
	}
	long := strings.Repeat("é", MaxTagValueLen+10)
	tests := []struct {
		name    string
		in      map[string]*string
		want    map[string]string
		bounded TagsBounded
	}{
		{name: "none", in: nil, want: nil},
		{name: "plain", in: map[string]*string{"env": ptr("prod"), "team": ptr("payments"), "empty": nil},
			want: map[string]string{"env": "prod", "team": "payments", "empty": ""}},
		{name: "over 50 keeps the first by name", in: many, want: want60, bounded: TagsBounded{DroppedOverMax: 10}},
		{name: "long name dropped", in: map[string]*string{strings.Repeat("n", MaxTagNameLen+1): ptr("x"), strings.Repeat("m", MaxTagNameLen): ptr("y")},
			want: map[string]string{strings.Repeat("m", MaxTagNameLen): "y"}, bounded: TagsBounded{DroppedLongName: 1}},
		{name: "long value trimmed by characters", in: map[string]*string{"note": ptr(long)},
			want: map[string]string{"note": strings.Repeat("é", MaxTagValueLen)}, bounded: TagsBounded{TrimmedValues: 1}},
		{name: "empty name dropped", in: map[string]*string{"": ptr("x")}, want: nil, bounded: TagsBounded{DroppedInvalid: 1}},
		{name: "invalid UTF-8 replaced", in: map[string]*string{"a\xffb": ptr("c\xfe"), "a\xfeb": ptr("d")},
			want: map[string]string{"a\uFFFDb": "d"}, bounded: TagsBounded{DroppedInvalid: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, b := Tags(tt.in)
			if !maps.Equal(got, tt.want) {
				t.Errorf("tags %v, want %v", got, tt.want)
			}
			if b != tt.bounded {
				t.Errorf("bounded %+v, want %+v", b, tt.bounded)
			}
			if b.Any() != (tt.bounded != TagsBounded{}) {
				t.Errorf("Any() = %v", b.Any())
			}
			for k, v := range got {
				if !utf8.ValidString(k) || !utf8.ValidString(v) {
					t.Errorf("invalid UTF-8 kept: %q=%q", k, v)
				}
			}
		})
	}
}
