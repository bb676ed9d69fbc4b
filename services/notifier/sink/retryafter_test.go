package sink_test

import (
	"testing"
	"time"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 12, 2, 15, 0, 0, 0, time.UTC)
	tests := []struct {
		in     string
		want   time.Duration
		wantOK bool
	}{
		{"0", 0, true},
		{"7", 7 * time.Second, true},
		{" 120 ", 2 * time.Minute, true},
		{"3600", time.Hour, true},
		{"86400", sink.MaxRetryAfter, true},
		{"99999999999999999999999", sink.MaxRetryAfter, true},
		{"9227000000", sink.MaxRetryAfter, true}, // would overflow time.Duration (found by FuzzParseRetryAfter)
		{"Wed, 02 Dec 2026 15:00:30 GMT", 30 * time.Second, true},
		{"Wednesday, 02-Dec-26 15:01:00 GMT", time.Minute, true}, // RFC 850
		{"Wed Dec  2 15:00:05 2026", 5 * time.Second, true},      // ANSI C
		{"Wed, 02 Dec 2026 14:00:00 GMT", 0, true},               // past
		{"Thu, 03 Dec 2026 15:00:00 GMT", sink.MaxRetryAfter, true},
		{"", 0, false},
		{"-5", 0, false},
		{"1.5", 0, false},
		{"soon", 0, false},
		{"+7", 0, false},
	}
	for _, tt := range tests {
		got, ok := sink.ParseRetryAfter(tt.in, now)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ParseRetryAfter(%q) = %v, %v; want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
		}
	}
}

func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"0", "120", "Wed, 02 Dec 2026 15:00:30 GMT", "Wed Dec  2 15:00:05 2026", "-1", "99999999999999999999", ""} {
		f.Add(s)
	}
	now := time.Date(2026, 12, 2, 15, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, s string) {
		d, ok := sink.ParseRetryAfter(s, now)
		if d < 0 || d > sink.MaxRetryAfter {
			t.Fatalf("ParseRetryAfter(%q) = %v, outside [0, %v]", s, d, sink.MaxRetryAfter)
		}
		if !ok && d != 0 {
			t.Fatalf("ParseRetryAfter(%q) = %v but not ok", s, d)
		}
	})
}
