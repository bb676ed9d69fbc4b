package auditlog

import (
	"bytes"
	"context"
	"fmt"
	"slices"

	"golang.org/x/mod/sumdb/note"
)

// ErrInconsistent means the log contradicts what a Verifier verified
// before: a checkpoint smaller than the verified one (truncated, rolled
// back), another root at the same size, an entry verified before that
// changed, or a new checkpoint whose tree does not extend the verified one
// (old entries rewritten, a fork). It wraps ErrTampered.
var ErrInconsistent = fmt.Errorf("%w: the log is inconsistent with what was verified before", ErrTampered)

// Verifier verifies a log incrementally: it keeps the state of the tree it
// verified (its size and root, the compact range that extends it and the
// hashes of its rightmost tiles) and the stream sequences the records
// accounted for, and each Update reads and checks only the entries added
// since, then requires the new checkpoint's root to be the verified tree
// extended by them, which is its consistency with everything verified
// before. Update costs what was added, not the log's size.
//
// A Verifier is not safe for concurrent use.
type Verifier struct {
	r   Reader
	v   note.Verifier
	t   *tree // the verified tree; nil before the first Update succeeds
	cp  Checkpoint
	cov *Coverage
	rep Report
}

// NewVerifier returns a Verifier of the log r reads, whose checkpoints v
// verifies. Nothing is verified until Update.
func NewVerifier(r Reader, v note.Verifier) *Verifier {
	return &Verifier{r: r, v: v}
}

// Checkpoint returns the checkpoint the last successful Update verified;
// ok is false before one.
func (vf *Verifier) Checkpoint() (Checkpoint, bool) { return vf.cp, vf.t != nil }

// Update reads the log's latest checkpoint, checks its signature and
// verifies the entries added since the last successful Update, as Verify
// does (well-formed records of one stream, each sequence once, every entry
// bundle and tile they touch against the recomputed tree), calling fn, when
// not nil, for each new record in order. The returned report counts every
// record verified so far; its Bundles, Tiles and OtherFiles count what this
// update read, and From is the size it started from.
//
// On failure the verified state does not change: the next Update starts
// again from the last verified checkpoint, never from scratch, so a log
// rewritten under the verifier keeps failing with ErrInconsistent, and fn
// may have been called for records that the failed update did not accept.
func (vf *Verifier) Update(ctx context.Context, fn func(index uint64, r *Record) error) (*Report, error) {
	raw, err := vf.r.ReadCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("auditlog: read checkpoint: %w", err)
	}
	cp, err := OpenCheckpoint(raw, vf.v)
	if err != nil {
		return nil, err
	}
	t, cov, rep := newTree(), NewCoverage(1), Report{}
	if vf.t != nil {
		switch {
		case cp.Size < vf.cp.Size:
			return nil, fmt.Errorf("%w: the log's checkpoint has %d entries, %d were verified: the log was truncated or rolled back", ErrInconsistent, cp.Size, vf.cp.Size)
		case cp.Size == vf.cp.Size && !bytes.Equal(cp.Hash, vf.cp.Hash):
			return nil, fmt.Errorf("%w: the log's checkpoint of size %d has another root than the one verified (a fork or a rewrite)", ErrInconsistent, cp.Size)
		case cp.Size == vf.cp.Size:
			vf.cp = cp // the same tree; the note may carry other cosignatures
			out := vf.rep
			out.From, out.Bundles, out.Tiles, out.OtherFiles = cp.Size, 0, 0, 0
			out.Checkpoint = string(raw)
			return &out, nil
		}
		t, cov, rep = vf.t.clone(), vf.cov.clone(), vf.rep
	}
	from := t.size
	rep.Origin, rep.Size, rep.Checkpoint, rep.From = cp.Origin, cp.Size, string(raw), from
	root, st, err := t.extend(ctx, vf.r, cp.Size, scanOptions{checkFiles: true}, func(index uint64, entry []byte) error {
		r, err := rep.add(cov, index, entry)
		if err != nil || fn == nil {
			return err
		}
		return fn(index, r)
	})
	rep.Bundles, rep.Tiles, rep.OtherFiles = st.Bundles, st.Tiles, st.ObsoleteFiles
	if err != nil {
		return &rep, err
	}
	rep.Root = root
	if !bytes.Equal(root, cp.Hash) {
		if from > 0 {
			return &rep, fmt.Errorf("%w: the signed checkpoint of size %d is not the verified log of size %d extended by the entries %d..%d the log holds: old entries were rewritten (a fork) or new ones altered",
				ErrInconsistent, cp.Size, from, from, cp.Size-1)
		}
		return &rep, fmt.Errorf("%w: the root hash recomputed from the entries differs from the signed checkpoint's", ErrTampered)
	}
	if first, last, ok := cov.FirstHole(); ok {
		return &rep, fmt.Errorf("%w: stream sequences %d..%d are missing from the log", ErrTampered, first, last)
	}
	rep.LastSeq = cov.next - 1
	vf.t, vf.cp, vf.cov, vf.rep = t, cp, cov, rep
	out := rep
	return &out, nil
}

func (c *Coverage) clone() *Coverage {
	return &Coverage{next: c.next, ahead: slices.Clone(c.ahead)}
}
