package fielddiff

import (
	"testing"
	"time"
)

type rec struct {
	Name  string
	N     int
	At    time.Time
	Tags  []string
	inner int
}

func TestFields(t *testing.T) {
	at := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name      string
		got, want rec
		diff      string
	}{
		{"equal", rec{Name: "a", N: 1, At: at}, rec{Name: "a", N: 1, At: at}, ""},
		{"same instant in another zone", rec{At: at.In(time.FixedZone("x", 3600))}, rec{At: at}, ""},
		{"one field", rec{Name: "a", N: 2}, rec{Name: "a", N: 1}, "\n\tN: got 2, want 1"},
		{"two fields in order", rec{Name: "b", N: 2}, rec{Name: "a", N: 1}, "\n\tName: got \"b\", want \"a\"\n\tN: got 2, want 1"},
		{"slices deeply", rec{Tags: []string{"x"}}, rec{Tags: []string{"y"}}, "\n\tTags: got []string{\"x\"}, want []string{\"y\"}"},
		{"unexported ignored", rec{inner: 1}, rec{inner: 2}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if d := Fields(tt.got, tt.want); d != tt.diff {
				t.Errorf("Fields = %q, want %q", d, tt.diff)
			}
		})
	}
}
