package auditor

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// TestAuditorAlertsWhenHistoryIsLost: history the log depends on disappears
// through the stream API (limits set by someone with stream edit rights;
// the streams refuse deletes and purges). The auditor raises a critical
// alert: when VIGIL_CHECKPOINTS no longer starts at sequence 1, and when
// VIGIL_EVENTS lost events it had not logged, whether or not a later event
// makes it write a gap record.
func TestAuditorAlertsWhenHistoryIsLost(t *testing.T) {
	unique := func(from, to int) []string {
		var s []string
		for i := from; i <= to; i++ {
			s = append(s, events.PolicySubject(fmt.Sprintf("p%d", i), "test"))
		}
		return s
	}
	for _, tc := range []struct {
		name string
		// lose runs with the auditor writing (running true) or stopped
		// after logging sequences 1..5.
		running bool
		lose    func(h *harness)
		code    string
		says    string // in the alert's message
		gap     bool   // a gap record for the lost events is logged
	}{
		{
			name: "checkpoints trimmed to one", running: true, code: AlertCheckpointsLost, says: "starts at sequence",
			lose: func(h *harness) {
				h.editStream(events.StreamCheckpoints, func(c *jetstream.StreamConfig) { c.MaxMsgs = 1 })
			},
		},
		{
			name: "unlogged events expired, nothing after them", code: AlertEventsLost, says: ": 6..10;",
			lose: func(h *harness) {
				h.publishOn(unique(6, 10)...)
				h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxAge, c.Duplicates = time.Second, time.Second })
				waitFor(h.t, 20*time.Second, "events expired", func() bool { return h.streamState(events.StreamEvents).Msgs == 0 })
			},
		},
		{
			name: "unlogged events dropped from the head, later ones logged", code: AlertEventsLost, says: ": 6..8;", gap: true,
			lose: func(h *harness) {
				h.publishOn(unique(6, 10)...)
				h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgs = 2 })
			},
		},
		{
			name: "unlogged events dropped from the middle", code: AlertEventsLost, says: ": 6..7;", gap: true,
			lose: func(h *harness) {
				s := events.PolicySubject("shared", "test")
				h.publishOn(s, s, s, events.PolicySubject("p9", "test"))
				h.editStream(events.StreamEvents, func(c *jetstream.StreamConfig) { c.MaxMsgsPerSubject = 1 })
				if first := h.streamState(events.StreamEvents).FirstSeq; first != 1 {
					h.t.Fatalf("first sequence %d: the test wants a hole in the middle", first)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *Config) { c.StreamCheckInterval = 100 * time.Millisecond })
			alerts, err := h.nc.SubscribeSync(events.AlertSubject(events.SeverityCritical, ""))
			if err != nil {
				t.Fatal(err)
			}

			stop := h.start()
			for i := range 5 { // five checkpoints
				h.publishOn(unique(i+1, i+1)...)
				h.waitCheckpoint(uint64(i + 1))
			}
			waitFor(t, 20*time.Second, "published checkpoints", func() bool {
				return h.streamState(events.StreamCheckpoints).LastSeq >= 5
			})
			if !tc.running {
				if err := stop(); err != nil {
					t.Fatal(err)
				}
			}
			if n := h.streamState(events.StreamAlerts).Msgs; n > 0 {
				t.Fatalf("%d alerts stored before anything was lost", n)
			}
			if n, _, _ := alerts.Pending(); n > 0 {
				m, _ := alerts.NextMsg(0)
				t.Fatalf("alert before anything was lost: %s", m.Data)
			}
			tc.lose(h)
			if !tc.running {
				stop = h.start()
			}

			a := waitAlert(t, alerts, tc.code, 20*time.Second)
			fieldsMatch(t, "alert", a,
				eq("Severity", a.Severity, events.SeverityCritical), eq("Source", a.Source, "vigil-auditor"),
				holds("Message", strings.Contains(a.Message, tc.says), strconv.Quote(a.Message), "to say "+strconv.Quote(tc.says)))
			if tc.gap {
				waitFor(t, 20*time.Second, "the gap and the event after it logged", func() bool { return h.log().size() >= 5+3 })
			}
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			// Reported once, though both the gap record and the stream's
			// first sequence can reveal a loss.
			if n := h.streamState(events.StreamAlerts).Msgs; n != 1 {
				t.Errorf("%d alerts stored, want 1", n)
			}
			recs, _ := h.records()
			gaps := slices.IndexFunc(recs, func(r auditlog.Record) bool { return r.Kind == auditlog.KindGap }) >= 0
			if gaps != tc.gap {
				t.Errorf("gap record logged: %v, want %v", gaps, tc.gap)
			}
		})
	}
}

// waitAlert returns the first alert with code that arrives on sub.
func waitAlert(t *testing.T, sub *nats.Subscription, code string, timeout time.Duration) events.Alert {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			t.Fatalf("no %s alert within %v: %v", code, timeout, err)
		}
		env, err := events.Parse(m.Data)
		if err != nil {
			t.Fatalf("alert on %s: %v", m.Subject, err)
		}
		var a events.Alert
		if err := env.Decode(events.TypeAlert, &a); err != nil {
			t.Fatalf("alert on %s: %v", m.Subject, err)
		}
		if a.Code == code {
			return a
		}
		t.Logf("other alert: %+v", a)
	}
}

func TestSeqSet(t *testing.T) {
	r := func(a, b uint64) seqRange { return seqRange{a, b} }
	for _, tc := range []struct {
		name    string
		add     []seqRange
		set     seqSet
		query   seqRange
		missing []seqRange
	}{
		{"empty", nil, seqSet{}, r(3, 7), []seqRange{r(3, 7)}},
		{"merges overlapping and adjacent", []seqRange{r(5, 6), r(1, 2), r(3, 4), r(10, 12), r(11, 15)}, seqSet{r(1, 6), r(10, 15)}, r(1, 20), []seqRange{r(7, 9), r(16, 20)}},
		{"covered", []seqRange{r(1, 10)}, seqSet{r(1, 10)}, r(4, 6), nil},
		{"head and tail", []seqRange{r(5, 6)}, seqSet{r(5, 6)}, r(3, 9), []seqRange{r(3, 4), r(7, 9)}},
		{"apart", []seqRange{r(20, 30)}, seqSet{r(20, 30)}, r(3, 9), []seqRange{r(3, 9)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var s seqSet
			for _, a := range tc.add {
				s.add(a)
			}
			if !slices.Equal(s, tc.set) { // nil and empty are equal
				t.Errorf("set %v, want %v", s, tc.set)
			}
			if got := s.missing(tc.query); !slices.Equal(got, tc.missing) {
				t.Errorf("missing(%v) = %v, want %v", tc.query, got, tc.missing)
			}
		})
	}
}
