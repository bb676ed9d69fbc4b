package auditor

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Codes of the critical alerts the writer raises on
// vigil.alert.critical.fleet when history the log depends on is gone.
const (
	// AlertCheckpointsLost: VIGIL_CHECKPOINTS no longer starts at
	// sequence 1, so signed checkpoints that auditors may not have
	// collected yet were removed (a limit set on the stream, which
	// refuses deletes and purges).
	AlertCheckpointsLost = "audit.checkpoints_lost"
	// AlertEventsLost: stream sequences left the logged stream before the
	// auditor logged them (deleted, purged, expired or dropped by a
	// limit). The log records them as gap entries.
	AlertEventsLost = "audit.events_lost"
)

// alertSource is the CloudEvents source of the auditor's alerts.
const alertSource = "vigil-auditor"

// seqRange is an inclusive range of stream sequences.
type seqRange struct{ first, last uint64 }

func (r seqRange) String() string {
	if r.first == r.last {
		return fmt.Sprint(r.first)
	}
	return fmt.Sprintf("%d..%d", r.first, r.last)
}

// seqSet is a set of stream sequences: sorted, disjoint, non-adjacent
// ranges.
type seqSet []seqRange

// add puts r into the set.
func (s *seqSet) add(r seqRange) {
	out := make(seqSet, 0, len(*s)+1)
	for _, c := range *s {
		switch {
		case c.last+1 < r.first || r.last+1 < c.first: // apart
			out = append(out, c)
		default: // overlapping or adjacent: merge into r
			r = seqRange{min(r.first, c.first), max(r.last, c.last)}
		}
	}
	out = append(out, r)
	slices.SortFunc(out, func(a, b seqRange) int {
		switch {
		case a.first < b.first:
			return -1
		case a.first > b.first:
			return 1
		}
		return 0
	})
	*s = out
}

// missing returns the parts of r not in the set, in order.
func (s seqSet) missing(r seqRange) []seqRange {
	var out []seqRange
	next := r.first
	for _, c := range s {
		if c.last < next || c.first > r.last {
			continue
		}
		if c.first > next {
			out = append(out, seqRange{next, c.first - 1})
		}
		if c.last >= r.last {
			return out
		}
		next = c.last + 1
	}
	return append(out, seqRange{next, r.last})
}

// lossQueue collects lost stream sequences found by the writer (gap
// records) and by the stream checks until an alert reports them.
type lossQueue struct {
	mu     sync.Mutex
	ranges []seqRange
	wake   chan struct{} // tells the checks to report at once
}

func newLossQueue() *lossQueue { return &lossQueue{wake: make(chan struct{}, 1)} }

// add queues r for an alert and wakes the checks.
func (q *lossQueue) add(r seqRange) {
	q.mu.Lock()
	q.ranges = append(q.ranges, r)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// take returns and clears the queued ranges.
func (q *lossQueue) take() []seqRange {
	q.mu.Lock()
	defer q.mu.Unlock()
	rs := q.ranges
	q.ranges = nil
	return rs
}

// requeue puts back ranges whose alert could not be published; the next
// check retries them.
func (q *lossQueue) requeue(rs []seqRange) {
	q.mu.Lock()
	q.ranges = append(rs, q.ranges...)
	q.mu.Unlock()
}

// checkState is what the stream checks already reported.
type checkState struct {
	alerted          seqSet // lost sequences of the logged stream already alerted
	checkpointsFirst uint64 // first sequence of VIGIL_CHECKPOINTS already alerted
	checkpointsGone  bool   // VIGIL_CHECKPOINTS missing, alerted
}

// checkLoop checks the streams at start and every StreamCheckInterval, and
// at once when the writer logged a gap.
func (w *writer) checkLoop(ctx context.Context) {
	t := time.NewTicker(w.cfg.StreamCheckInterval)
	defer t.Stop()
	var st checkState
	for {
		w.checkStreams(ctx, &st)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.losses.wake:
		}
	}
}

// checkStreams raises a critical alert when VIGIL_CHECKPOINTS no longer
// starts at sequence 1, or when the logged stream dropped sequences the
// auditor has not logged (its first sequence moved past them, or the writer
// logged a gap record for them). Each loss is reported once per writer; an
// alert that cannot be published is retried at the next check.
func (w *writer) checkStreams(ctx context.Context, st *checkState) {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()

	w.checkCheckpoints(cctx, st)

	var queued seqSet
	for _, r := range w.losses.take() {
		queued.add(r)
	}
	info, err := w.stream.Info(cctx)
	if err != nil {
		w.log.Warn("check logged stream", "stream", w.cfg.Stream, "err", err)
	} else if seen := w.seen.Load(); info.State.FirstSeq > seen+1 {
		// Read after the stream's state: a sequence below its first that
		// was not delivered by now never will be. (Messages delivered to
		// the client but still in its buffer count as lost here; that
		// takes the stream dropping them within moments of delivery.)
		queued.add(seqRange{seen + 1, info.State.FirstSeq - 1})
	}
	var fresh []seqRange
	for _, r := range queued {
		fresh = append(fresh, st.alerted.missing(r)...)
	}
	if len(fresh) == 0 {
		return
	}
	var n uint64
	list := make([]string, 0, min(len(fresh), 8)+1)
	for i, r := range fresh {
		n += r.last - r.first + 1
		if i < 8 {
			list = append(list, r.String())
		}
	}
	if len(fresh) > 8 {
		list = append(list, fmt.Sprintf("and %d more ranges", len(fresh)-8))
	}
	a := events.Alert{Code: AlertEventsLost,
		Message: fmt.Sprintf("%d %s sequences left the stream before the auditor logged them (deleted, purged, expired or dropped by a limit): %s; the log records them as gap entries",
			n, w.cfg.Stream, strings.Join(list, ", ")),
		CauseID: fmt.Sprintf("%s:%s", w.cfg.Stream, fresh[0]),
	}
	if !w.alert(cctx, a) {
		w.losses.requeue(fresh)
		return
	}
	for _, r := range fresh {
		st.alerted.add(r)
	}
}

// checkCheckpoints alerts when VIGIL_CHECKPOINTS is gone or no longer
// starts at sequence 1 (again when its first sequence moves further).
func (w *writer) checkCheckpoints(ctx context.Context, st *checkState) {
	s, err := w.js.Stream(ctx, events.StreamCheckpoints)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if !st.checkpointsGone {
			st.checkpointsGone = w.alert(ctx, events.Alert{Code: AlertCheckpointsLost,
				Message: fmt.Sprintf("%s does not exist: every signed checkpoint published before was deleted with the stream", events.StreamCheckpoints),
				CauseID: events.StreamCheckpoints + ":deleted",
			})
		}
		return
	}
	if err != nil {
		w.log.Warn("check checkpoints stream", "err", err)
		return
	}
	state := s.CachedInfo().State
	if state.FirstSeq <= max(1, st.checkpointsFirst) {
		return
	}
	a := events.Alert{Code: AlertCheckpointsLost,
		Message: fmt.Sprintf("%s starts at sequence %d (last %d, %d messages): signed checkpoints 1..%d were removed, most likely by a limit set on the stream; collect the remaining checkpoints and check the stream's configuration",
			events.StreamCheckpoints, state.FirstSeq, state.LastSeq, state.Msgs, state.FirstSeq-1),
		CauseID: fmt.Sprintf("%s:%d", events.StreamCheckpoints, state.FirstSeq),
	}
	if w.alert(ctx, a) {
		st.checkpointsFirst = state.FirstSeq
	}
}

// alert logs a and publishes it as a critical alert on
// vigil.alert.critical.fleet, under an id derived from its code and cause
// so that a retried publish is stored once. It reports whether the alert
// was published.
func (w *writer) alert(ctx context.Context, a events.Alert) bool {
	a.Severity = events.SeverityCritical
	a.Source = alertSource
	a.At = time.Now().UTC()
	w.log.Error("critical: "+a.Message, "code", a.Code)
	sum := sha256.Sum256([]byte(a.Code + "\x00" + a.CauseID))
	if err := w.conn.PublishAlert(ctx, alertSource, "auditor-"+hex.EncodeToString(sum[:16]), a); err != nil {
		w.log.Error("publish alert; retrying at the next check", "code", a.Code, "err", err)
		return false
	}
	w.m.alerts.Add(ctx, 1)
	return true
}
