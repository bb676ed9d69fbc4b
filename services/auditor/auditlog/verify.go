package auditlog

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"slices"

	"golang.org/x/mod/sumdb/note"
)

// maxAhead bounds the out-of-order sequence ranges a verifier keeps while
// waiting for the sequences before them.
const maxAhead = 1 << 20

// VerifyOptions tunes Verify.
type VerifyOptions struct {
	// Trusted are earlier checkpoints (signed notes) of this log that the
	// verifier trusts, for example ones published on
	// vigil.audit.checkpoint or kept by a previous verification. The
	// log must be consistent with each of them.
	Trusted [][]byte
}

// Report says what Verify checked.
type Report struct {
	Origin     string `json:"origin"`
	Size       uint64 `json:"size"`
	From       uint64 `json:"from,omitempty"` // a Verifier's update: the size it started from
	Root       []byte `json:"root"`           // base64 in JSON
	Checkpoint string `json:"checkpoint"`     // the signed note verified

	Events      uint64 `json:"events"`
	Invalid     uint64 `json:"invalid"`
	Gaps        uint64 `json:"gaps"`
	Stream      string `json:"stream"`
	LastSeq     uint64 `json:"last_seq"`     // every stream sequence 1..LastSeq is accounted for
	MissingSeqs uint64 `json:"missing_seqs"` // sequences inside gap records
	OutOfOrder  uint64 `json:"out_of_order"` // records logged after a later sequence (repairs after a write failure)

	Bundles      uint64   `json:"bundles"`
	Tiles        uint64   `json:"tiles"`
	OtherFiles   uint64   `json:"other_files"`   // older partial tiles and bundles checked
	TrustedSizes []uint64 `json:"trusted_sizes"` // sizes of the trusted checkpoints proven consistent
}

func (r *Report) String() string {
	return fmt.Sprintf("log %s: %d entries verified against checkpoint (root %s): %d events, %d invalid messages, %d gap records (%d missing sequences), stream %s sequences 1..%d each exactly once; %d entry bundles, %d tiles, %d older partial files checked; consistent with %d trusted checkpoint(s)",
		r.Origin, r.Size, base64.StdEncoding.EncodeToString(r.Root), r.Events, r.Invalid, r.Gaps, r.MissingSeqs, r.Stream, r.LastSeq,
		r.Bundles, r.Tiles, r.OtherFiles, len(r.TrustedSizes))
}

// Verify checks the whole log in d against its latest checkpoint, signed by
// v: the checkpoint signature; every entry bundle and every tile against the
// Merkle tree recomputed from the entries (so a changed, missing or
// truncated file fails); that the recomputed root equals the checkpoint's;
// that every entry is a well-formed record and the records account for the
// stream's sequences 1..N each exactly once; and that the log is
// consistent with each trusted earlier checkpoint (no fork, no rollback).
func Verify(ctx context.Context, d Reader, v note.Verifier, opts VerifyOptions) (*Report, error) {
	raw, err := d.ReadCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: read checkpoint: %w", ErrTampered, err)
	}
	cp, err := OpenCheckpoint(raw, v)
	if err != nil {
		return nil, err
	}
	rep := &Report{Origin: cp.Origin, Size: cp.Size, Checkpoint: string(raw)}

	trusted := make([]Checkpoint, 0, len(opts.Trusted))
	rootsAt := map[uint64][]byte{}
	for i, t := range opts.Trusted {
		tc, err := OpenCheckpoint(t, v)
		if err != nil {
			return rep, fmt.Errorf("trusted checkpoint %d: %w", i+1, err)
		}
		if tc.Size > cp.Size {
			return rep, fmt.Errorf("%w: the log's checkpoint (size %d) is smaller than trusted checkpoint %d (size %d): the log was truncated or rolled back",
				ErrTampered, cp.Size, i+1, tc.Size)
		}
		trusted = append(trusted, tc)
		rootsAt[tc.Size] = nil
	}

	cov := NewCoverage(1)
	root, st, err := scan(ctx, d, cp.Size, scanOptions{checkFiles: true, rootsAt: rootsAt}, func(index uint64, entry []byte) error {
		_, err := rep.add(cov, index, entry)
		return err
	})
	rep.Bundles, rep.Tiles, rep.OtherFiles = st.Bundles, st.Tiles, st.ObsoleteFiles
	if err != nil {
		return rep, err
	}
	rep.Root = root
	if !bytes.Equal(root, cp.Hash) {
		return rep, fmt.Errorf("%w: the root hash recomputed from the entries differs from the signed checkpoint's", ErrTampered)
	}
	if first, last, ok := cov.FirstHole(); ok {
		return rep, fmt.Errorf("%w: stream sequences %d..%d are missing from the log", ErrTampered, first, last)
	}
	rep.LastSeq = cov.next - 1
	for i, tc := range trusted {
		if !bytes.Equal(rootsAt[tc.Size], tc.Hash) {
			return rep, fmt.Errorf("%w: the log is inconsistent with trusted checkpoint %d (size %d): its tree at that size has a different root (a fork or a rewrite)",
				ErrTampered, i+1, tc.Size)
		}
		rep.TrustedSizes = append(rep.TrustedSizes, tc.Size)
	}
	return rep, nil
}

// add checks the record in entry (at index) and counts it: a well-formed
// record of the log's one stream, accounting for sequences not accounted
// for before.
func (rep *Report) add(cov *Coverage, index uint64, entry []byte) (*Record, error) {
	r, err := ParseRecord(entry)
	if err != nil {
		return nil, fmt.Errorf("%w: entry %d: %w", ErrTampered, index, err)
	}
	if rep.Stream == "" {
		rep.Stream = r.Stream
	} else if r.Stream != rep.Stream {
		return nil, fmt.Errorf("%w: entry %d is from stream %q, the log records %q", ErrTampered, index, r.Stream, rep.Stream)
	}
	switch r.Kind {
	case KindEvent:
		rep.Events++
	case KindInvalid:
		rep.Invalid++
	case KindGap:
		rep.Gaps++
		rep.MissingSeqs += r.Seq - r.FirstSeq + 1
	}
	ooo, err := cov.Add(r.FirstCovered(), r.Seq)
	if err != nil {
		return nil, fmt.Errorf("%w: entry %d: %w", ErrTampered, index, err)
	}
	if ooo {
		rep.OutOfOrder++
	}
	return &r, nil
}

// Coverage tracks which stream sequences a log's records account for.
type Coverage struct {
	next  uint64      // every sequence below next is covered
	ahead [][2]uint64 // sorted, disjoint covered ranges above next
}

// NewCoverage starts with every sequence below next covered.
func NewCoverage(next uint64) *Coverage { return &Coverage{next: max(next, 1)} }

// Next is the smallest sequence not covered.
func (c *Coverage) Next() uint64 { return c.next }

// Covered reports whether seq is covered.
func (c *Coverage) Covered(seq uint64) bool {
	if seq < c.next {
		return true
	}
	for _, r := range c.ahead {
		if r[0] <= seq && seq <= r[1] {
			return true
		}
	}
	return false
}

// NextCovered returns the start of the first covered range above Next, if
// any: the sequences Next()..NextCovered()-1 are uncovered.
func (c *Coverage) NextCovered() (uint64, bool) {
	if len(c.ahead) == 0 {
		return 0, false
	}
	return c.ahead[0][0], true
}

// Add records [first, last]; it reports whether the range came before an
// earlier range had been filled in (out of order) and fails on a sequence
// covered twice.
func (c *Coverage) Add(first, last uint64) (bool, error) {
	if first < c.next {
		return false, fmt.Errorf("stream sequence %d is logged more than once", max(first, 1))
	}
	i, _ := slices.BinarySearchFunc(c.ahead, first, func(r [2]uint64, s uint64) int {
		switch {
		case r[1] < s:
			return -1
		case r[0] > s:
			return 1
		}
		return 0
	})
	if i < len(c.ahead) && c.ahead[i][0] <= last {
		return false, fmt.Errorf("stream sequence %d is logged more than once", max(first, c.ahead[i][0]))
	}
	if first == c.next {
		c.next = last + 1
		for len(c.ahead) > 0 && c.ahead[0][0] == c.next {
			c.next = c.ahead[0][1] + 1
			c.ahead = c.ahead[1:]
		}
		return len(c.ahead) > 0, nil
	}
	if len(c.ahead) >= maxAhead {
		return false, fmt.Errorf("more than %d out-of-order ranges: stream sequence %d is missing", maxAhead, c.next)
	}
	c.ahead = slices.Insert(c.ahead, i, [2]uint64{first, last})
	return true, nil
}

// FirstHole returns the first missing range below the highest covered
// sequence.
func (c *Coverage) FirstHole() (uint64, uint64, bool) {
	if len(c.ahead) == 0 {
		return 0, 0, false
	}
	return c.next, c.ahead[0][0] - 1, true
}
