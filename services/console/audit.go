package console

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

// auditView is the console's view of the audit log: the latest checkpoint
// published on vigil.audit.checkpoint, the result of its own incremental
// verification of the log (an auditlog.Verifier over the log directory or
// the auditor's /log/ URL: each round reads only the entries added since
// the previous one and requires the new checkpoint to extend the verified
// tree), and the log index of every VIGIL_EVENTS message for inclusion
// proofs.
type auditView struct {
	logDir, logURL, keyFile string // logDir and logURL "": no log
	timeout                 time.Duration

	mu       sync.RWMutex
	r        auditlog.Reader    // nil until the log is opened
	vf       *auditlog.Verifier // used by verifyOnce only
	v        note.Verifier      // nil until the key is read
	latest   Checkpoint         // latest on the bus
	verified Verification
	cp       auditlog.Checkpoint // the checkpoint verified
	indexOf  map[uint64]uint64   // VIGIL_EVENTS sequence -> log index
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

// Verification is the state of the console's verification of the log.
type Verification struct {
	Source   string // the log's directory or URL
	Size     uint64 // verified to entry Size-1
	At       time.Time
	From     uint64 // the size the latest successful round started from
	Events   uint64
	Gaps     uint64
	Root     []byte
	Err      string // the latest round's failure, if it failed
	FailedAt time.Time
	Rounds   int
	// Alarm is the first failure that showed the log inconsistent with
	// what the console verified before (rewritten, truncated, forked). It
	// stays until the console restarts: the console keeps verifying from
	// its last verified state, never again from scratch.
	Alarm   string
	AlarmAt time.Time
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

func newAuditView(logDir, logURL, keyFile string, timeout time.Duration) (*auditView, error) {
	if logDir != "" && logURL != "" {
		return nil, fmt.Errorf("audit log: give its directory (%q) or its URL (%q), not both", logDir, logURL)
	}
	if (logDir == "" && logURL == "") != (keyFile == "") {
		return nil, fmt.Errorf("audit log and key go together (log %q, key %q)", logDir+logURL, keyFile)
	}
	a := &auditView{logDir: logDir, logURL: logURL, keyFile: keyFile, timeout: timeout, indexOf: map[uint64]uint64{}}
	if logURL != "" {
		h, err := auditlog.OpenURL(logURL, auditlog.HTTPOptions{Timeout: timeout})
		if err != nil {
			return nil, err
		}
		a.r = h
	}
	a.verified.Source = logDir + logURL
	return a, nil
}

// configured reports whether the console was given a log and a key.
func (a *auditView) configured() bool { return a.keyFile != "" }

// open returns the log and its key, opening them the first time they both
// exist (the auditor may create them after the console starts).
func (a *auditView) open() (auditlog.Reader, note.Verifier, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.vf != nil {
		return a.r, a.v, nil
	}
	if !a.configured() {
		return nil, nil, errors.New("no audit log configured")
	}
	v, err := auditlog.LoadVerifier(a.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("audit key: %w", err)
	}
	if a.r == nil {
		d, err := auditlog.OpenDir(a.logDir)
		if err != nil {
			return nil, nil, fmt.Errorf("audit log: %w", err)
		}
		a.r = d
	}
	a.v, a.vf = v, auditlog.NewVerifier(a.r, v)
	return a.r, v, nil
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

// verifyOnce runs one round: the entries added since the last verified
// checkpoint, checked against the log's latest signed checkpoint, which
// must extend the verified tree; the new events join the map from stream
// sequence to log index. Only verifyLoop calls it (the Verifier is not
// safe for concurrent use).
func (a *auditView) verifyOnce(ctx context.Context) {
	_, _, err := a.open()
	var rep *auditlog.Report
	added := map[uint64]uint64{}
	if err == nil {
		a.mu.RLock()
		vf := a.vf
		a.mu.RUnlock()
		rep, err = vf.Update(ctx, func(index uint64, r *auditlog.Record) error {
			if r.Kind == auditlog.KindEvent && r.Stream == events.StreamEvents {
				added[r.Seq] = index
			}
			return nil
		})
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return
	}
	a.verified.Rounds++
	now := time.Now()
	if err != nil {
		a.verified.Err, a.verified.FailedAt = err.Error(), now
		if errors.Is(err, auditlog.ErrInconsistent) && a.verified.Alarm == "" {
			a.verified.Alarm, a.verified.AlarmAt = err.Error(), now
		}
		return
	}
	maps.Copy(a.indexOf, added)
	a.cp, _ = a.vf.Checkpoint()
	ver := &a.verified
	ver.Size, ver.At, ver.From, ver.Events, ver.Gaps, ver.Root = rep.Size, now, rep.From, rep.Events, rep.Gaps, rep.Root
	ver.Err, ver.FailedAt = "", time.Time{}
}

// proofTimeout bounds the reading of one inclusion proof (a VM page shows
// ten).
const proofTimeout = 2 * time.Second

// prove builds and checks the inclusion proof of the VIGIL_EVENTS message
// at seq, whose CloudEvent id is eventID, against the checkpoint the
// console verified last (signed by the log's key, and consistent with
// every one verified before).
func (a *auditView) prove(ctx context.Context, seq uint64, eventID string) Proof {
	r, v, err := a.open()
	if err != nil {
		return Proof{Err: err.Error()}
	}
	a.mu.RLock()
	index, ok := a.indexOf[seq]
	size, at := a.verified.Size, a.cp
	a.mu.RUnlock()
	if !ok {
		return Proof{Err: fmt.Sprintf("not in the verified log yet (verified to %d entries)", size)}
	}
	ctx, cancel := context.WithTimeout(ctx, proofTimeout)
	defer cancel()
	p, err := auditlog.ProveAt(ctx, r, index, at)
	if err != nil {
		return Proof{Index: index, Err: err.Error()}
	}
	cp, err := auditlog.CheckProof(p, v, nil)
	if err != nil {
		return Proof{Index: index, Err: err.Error()}
	}
	out := Proof{Index: index, Size: cp.Size, Origin: cp.Origin, Hashes: len(p.Hashes)}
	rec, err := auditlog.ParseRecord(p.Extra)
	if err != nil {
		out.Err = err.Error()
		return out
	}
	env, err := rec.Envelope()
	switch {
	case err != nil:
		out.Err = "the entry holds no event: " + err.Error()
	case rec.Stream != events.StreamEvents || rec.Seq != seq || env.ID != eventID:
		out.Err = fmt.Sprintf("entry %d is %s sequence %d, event %s: not this event", index, rec.Stream, rec.Seq, env.ID)
	default:
		out.Verified = true
	}
	return out
}
