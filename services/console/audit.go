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
	logDir, keyFile string // both "": no log

	mu       sync.RWMutex
	dir      *auditlog.Dir // nil until the log directory exists
	v        note.Verifier // nil until the key is read
	latest   Checkpoint    // latest on the bus
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
	if (logDir == "") != (keyFile == "") {
		return nil, fmt.Errorf("audit log and key go together (log %q, key %q)", logDir, keyFile)
	}
	return &auditView{logDir: logDir, keyFile: keyFile, indexOf: map[uint64]uint64{}}, nil
}

// configured reports whether the console was given a log and a key.
func (a *auditView) configured() bool { return a.logDir != "" }

// open returns the log and its key, opening them the first time they both
// exist (the auditor may create them after the console starts).
func (a *auditView) open() (*auditlog.Dir, note.Verifier, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.dir != nil && a.v != nil {
		return a.dir, a.v, nil
	}
	if !a.configured() {
		return nil, nil, errors.New("no audit log configured")
	}
	v, err := auditlog.LoadVerifier(a.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("audit key: %w", err)
	}
	d, err := auditlog.OpenDir(a.logDir)
	if err != nil {
		return nil, nil, fmt.Errorf("audit log: %w", err)
	}
	a.dir, a.v = d, v
	return d, v, nil
}

func (a *auditView) verifier() note.Verifier {
	a.mu.RLock()
	defer a.mu.RUnlock()
	return a.v
}

// published records a checkpoint from vigil.audit.checkpoint.
func (a *auditView) published(raw []byte) {
	c := Checkpoint{Raw: string(raw), Received: time.Now()}
	if a.configured() {
		_, _, _ = a.open()
	}
	if v := a.verifier(); v != nil {
		cp, err := auditlog.OpenCheckpoint(raw, v)
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
	if !a.configured() {
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
	d, v, err := a.open()
	if err != nil {
		a.mu.Lock()
		a.verified.Err, a.verified.FailedAt = err.Error(), time.Now()
		a.mu.Unlock()
		return
	}
	a.mu.RLock()
	var opts auditlog.VerifyOptions
	if a.trusted != nil {
		opts.Trusted = [][]byte{a.trusted}
	}
	a.mu.RUnlock()
	rep, err := auditlog.Verify(ctx, d, v, opts)
	if err == nil && rep.Size > 0 {
		idx := map[uint64]uint64{}
		_, err = auditlog.Search(ctx, d, v, func(r *auditlog.Record) bool {
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
	d, v, err := a.open()
	if err != nil {
		return Proof{Err: err.Error()}
	}
	a.mu.RLock()
	index, ok := a.indexOf[seq]
	size := a.verified.Size
	a.mu.RUnlock()
	if !ok {
		return Proof{Err: fmt.Sprintf("not in the verified log yet (verified to %d entries)", size)}
	}
	p, err := auditlog.Prove(ctx, d, index, v)
	if err != nil {
		return Proof{Index: index, Err: err.Error()}
	}
	cp, err := auditlog.CheckProof(p, v, nil)
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
