package console

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// auditView is the console's view of the audit log: the latest checkpoint
// published on vigil.audit.checkpoint, the result of its own repeated
// verification of the log directory (auditlog.Verify, each round
// consistent with the checkpoint the previous round verified), and the
// log index of every VIGIL_EVENTS message for inclusion proofs.
type auditView struct {
	dir *auditlog.Dir // nil: no log to read
	v   note.Verifier // nil: nothing can be verified

	mu       sync.RWMutex
	latest   Checkpoint // latest on the bus
	verified Verification
	indexOf  map[uint64]uint64 // VIGIL_EVENTS sequence -> log index
	trusted  []byte            // the last checkpoint verified
}

// Checkpoint is the latest checkpoint published on the bus.
type Checkpoint struct {
	Origin   string
	Size     uint64
	Raw      string
	Signed   bool // its signature verified with the log's key
	Err      string
	Received time.Time
}

// Verification is the outcome of the console's latest verification round.
type Verification struct {
	Size     uint64 // verified to entry Size-1
	At       time.Time
	Events   uint64
	Gaps     uint64
	Root     []byte
	Err      string // the latest round's failure, if it failed
	FailedAt time.Time
	Rounds   int
}

// Proof is an event's inclusion proof as checked by the console.
type Proof struct {
	Index    uint64 // the entry's index in the log
	Size     uint64 // the size of the checkpoint it was checked against
	Origin   string
	Hashes   int
	Verified bool
	Err      string
}

func newAuditView(logDir, keyFile string) (*auditView, error) {
	a := &auditView{indexOf: map[uint64]uint64{}}
	if keyFile != "" {
		v, err := auditlog.LoadVerifier(keyFile)
		if err != nil {
			return nil, fmt.Errorf("audit key: %w", err)
		}
		a.v = v
	}
	if logDir != "" {
		d, err := auditlog.OpenDir(logDir)
		if err != nil {
			return nil, fmt.Errorf("audit log: %w", err)
		}
		a.dir = d
	}
	return a, nil
}

// published records a checkpoint from vigil.audit.checkpoint.
func (a *auditView) published(raw []byte) {
	c := Checkpoint{Raw: string(raw), Received: time.Now()}
	if a.v != nil {
		cp, err := auditlog.OpenCheckpoint(raw, a.v)
		if err != nil {
			c.Err = err.Error()
		} else {
			c.Origin, c.Size, c.Signed = cp.Origin, cp.Size, true
		}
	} else {
		c.Err = "no verifier key configured: signature not checked"
	}
	a.mu.Lock()
	a.latest = c
	a.mu.Unlock()
}

// state returns the latest checkpoint and verification.
func (a *auditView) state() (Checkpoint, Verification) {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.latest, a.verified
}

// verifyLoop verifies the log every interval until ctx ends.
func (a *auditView) verifyLoop(ctx context.Context, every time.Duration) error {
	if a.dir == nil || a.v == nil {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		a.verifyOnce(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// verifyOnce runs one round: the whole log against its latest checkpoint,
// consistent with the previous round's, then the map from stream sequence
// to log index.
func (a *auditView) verifyOnce(ctx context.Context) {
	a.mu.RLock()
	var opts auditlog.VerifyOptions
	if a.trusted != nil {
		opts.Trusted = [][]byte{a.trusted}
	}
	a.mu.RUnlock()
	rep, err := auditlog.Verify(ctx, a.dir, a.v, opts)
	if err == nil && rep.Size > 0 {
		idx := map[uint64]uint64{}
		_, err = auditlog.Search(ctx, a.dir, a.v, func(r *auditlog.Record) bool {
			return r.Kind == auditlog.KindEvent && r.Stream == events.StreamEvents
		}, func(index uint64, r *auditlog.Record) error {
			idx[r.Seq] = index
			return nil
		})
		if err == nil {
			a.mu.Lock()
			a.indexOf = idx
			a.mu.Unlock()
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.verified.Rounds++
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return
		}
		a.verified.Err, a.verified.FailedAt = err.Error(), time.Now()
		return
	}
	a.verified = Verification{Size: rep.Size, At: time.Now(), Events: rep.Events, Gaps: rep.Gaps, Root: rep.Root, Rounds: a.verified.Rounds}
	a.trusted = []byte(rep.Checkpoint)
}

// prove builds and checks the inclusion proof of the VIGIL_EVENTS message
// at seq, whose CloudEvent id is eventID, against the log's latest signed
// checkpoint.
func (a *auditView) prove(ctx context.Context, seq uint64, eventID string) Proof {
	if a.dir == nil || a.v == nil {
		return Proof{Err: "no audit log configured"}
	}
	a.mu.RLock()
	index, ok := a.indexOf[seq]
	size := a.verified.Size
	a.mu.RUnlock()
	if !ok {
		return Proof{Err: fmt.Sprintf("not in the verified log yet (verified to %d entries)", size)}
	}
	p, err := auditlog.Prove(ctx, a.dir, index, a.v)
	if err != nil {
		return Proof{Index: index, Err: err.Error()}
	}
	cp, err := auditlog.CheckProof(p, a.v, nil)
	if err != nil {
		return Proof{Index: index, Err: err.Error()}
	}
	out := Proof{Index: index, Size: cp.Size, Origin: cp.Origin, Hashes: len(p.Hashes)}
	r, err := auditlog.ParseRecord(p.Extra)
	if err != nil {
		out.Err = err.Error()
		return out
	}
	env, err := r.Envelope()
	switch {
	case err != nil:
		out.Err = "the entry holds no event: " + err.Error()
	case r.Stream != events.StreamEvents || r.Seq != seq || env.ID != eventID:
		out.Err = fmt.Sprintf("entry %d is %s sequence %d, event %s: not this event", index, r.Stream, r.Seq, env.ID)
	default:
		out.Verified = true
	}
	return out
}
