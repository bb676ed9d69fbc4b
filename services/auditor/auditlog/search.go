package auditlog

import (
	"bytes"
	"context"
	"fmt"

	f_log "github.com/transparency-dev/formats/log"
	"golang.org/x/mod/sumdb/note"
)

// SearchResult says what a search covered.
type SearchResult struct {
	Size     uint64 // entries searched: the checkpoint's size
	Verified bool   // the checkpoint's signature and root were verified
}

// Search reads every entry covered by the log's latest checkpoint and calls
// fn for each record that match accepts. With a verifier the checkpoint's
// signature is checked first and, at the end, the root recomputed from the
// entries must equal the checkpoint's (so what was listed is what the log
// commits to); without one nothing is verified.
func Search(ctx context.Context, d Reader, v note.Verifier, match func(*Record) bool, fn func(index uint64, r *Record) error) (SearchResult, error) {
	raw, err := d.ReadCheckpoint(ctx)
	if err != nil {
		return SearchResult{}, fmt.Errorf("auditlog: read checkpoint: %w", err)
	}
	var size uint64
	var want []byte
	if v != nil {
		cp, err := OpenCheckpoint(raw, v)
		if err != nil {
			return SearchResult{}, err
		}
		size, want = cp.Size, cp.Hash
	} else {
		body, _, ok := bytes.Cut(raw, []byte("\n\n"))
		if !ok {
			return SearchResult{}, fmt.Errorf("%w: checkpoint is not a signed note", ErrTampered)
		}
		var cp f_log.Checkpoint
		if _, err := cp.Unmarshal(append(body, '\n')); err != nil {
			return SearchResult{}, fmt.Errorf("%w: checkpoint: %w", ErrTampered, err)
		}
		size = cp.Size
	}
	root, _, err := scan(ctx, d, size, scanOptions{}, func(index uint64, entry []byte) error {
		r, err := ParseRecord(entry)
		if err != nil {
			return fmt.Errorf("%w: entry %d: %w", ErrTampered, index, err)
		}
		if match(&r) {
			return fn(index, &r)
		}
		return nil
	})
	if err != nil {
		return SearchResult{Size: size}, err
	}
	if want != nil && !bytes.Equal(root, want) {
		return SearchResult{Size: size}, fmt.Errorf("%w: the root hash recomputed from the entries differs from the signed checkpoint's", ErrTampered)
	}
	return SearchResult{Size: size, Verified: want != nil}, nil
}
