package auditlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/api/layout"
)

// scanStats counts what a scan read and checked.
type scanStats struct {
	Bundles       uint64 // entry bundles read
	Tiles         uint64 // hash tiles compared with the recomputed tree
	ObsoleteFiles uint64 // older partial tiles/bundles checked as prefixes
}

type scanOptions struct {
	// checkFiles compares every tile and every other version of each
	// bundle and tile with the tree recomputed from the entries.
	checkFiles bool
	// rootsAt collects the root hashes at these tree sizes (keys); the
	// values are filled in.
	rootsAt map[uint64][]byte
}

// tree is the state of a scan at a tree size: the compact range of the
// entries so far and, per tile level, the hashes of the rightmost tile so
// far (the right border of the tree). That is all a later scan needs to
// extend it with the entries after size without reading the earlier ones
// again, and to check the tiles and the bundle it shares with them.
type tree struct {
	size uint64
	rng  *compact.Range
	edge [][][]byte // per tile level: the hashes of its rightmost tile so far
	idx  []uint64   // per tile level: that tile's index
}

var rangeFactory = compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}

func newTree() *tree { return &tree{rng: rangeFactory.NewEmptyRange(0)} }

// clone returns a copy that extend can change without changing t.
func (t *tree) clone() *tree {
	hashes := make([][]byte, 0, len(t.rng.Hashes()))
	for _, h := range t.rng.Hashes() {
		hashes = append(hashes, bytes.Clone(h))
	}
	rng, err := rangeFactory.NewRange(0, t.size, hashes)
	if err != nil {
		panic("auditlog: cloning a compact range: " + err.Error())
	}
	c := &tree{size: t.size, rng: rng, idx: slices.Clone(t.idx)}
	for _, l := range t.edge {
		c.edge = append(c.edge, append(make([][]byte, 0, layout.TileWidth), l...))
	}
	return c
}

// scan reads the entries [0, size) from r in order, calls fn for each,
// recomputes the Merkle tree and returns its root hash.
func scan(ctx context.Context, r Reader, size uint64, opts scanOptions, fn func(index uint64, entry []byte) error) ([]byte, scanStats, error) {
	return newTree().extend(ctx, r, size, opts, fn)
}

// extend reads the entries [t.size, size) from r in order, calls fn for
// each, appends them to the tree and returns its new root hash. The entries
// before t.size are not read again, except those sharing the first bundle
// read, which must be the ones the tree holds. On failure t is left part
// way: callers that keep t extend a clone.
func (t *tree) extend(ctx context.Context, r Reader, size uint64, opts scanOptions, fn func(index uint64, entry []byte) error) ([]byte, scanStats, error) {
	var st scanStats
	hasher := rfc6962.DefaultHasher
	if size < t.size {
		return nil, st, fmt.Errorf("auditlog: internal error: extending a tree of size %d to %d", t.size, size)
	}
	tv := &tileVerifier{ctx: ctx, r: r, size: size, st: &st, checkFiles: opts.checkFiles, bufs: t.edge, idx: t.idx, knownIdx: slices.Clone(t.idx)}
	for _, b := range t.edge {
		tv.known = append(tv.known, len(b))
	}
	if want, ok := opts.rootsAt[0]; ok && want == nil {
		opts.rootsAt[0] = hasher.EmptyRoot()
	}
	from := t.size
	for b := from / layout.EntryBundleWidth; b*layout.EntryBundleWidth < size; b++ {
		if err := ctx.Err(); err != nil {
			return nil, st, err
		}
		n := min(uint64(layout.EntryBundleWidth), size-b*layout.EntryBundleWidth)
		p := uint8(n % layout.EntryBundleWidth)
		path := layout.EntriesPath(b, p)
		raw, err := r.ReadEntryBundle(ctx, b, p)
		if errors.Is(err, fs.ErrNotExist) && p != 0 {
			// A live log may have grown past this bundle since its
			// checkpoint, and the writer removes outgrown partial bundles.
			if raw, err = r.ReadEntryBundle(ctx, b, 0); err == nil {
				path = layout.EntriesPath(b, 0)
			}
		}
		if err != nil {
			return nil, st, fmt.Errorf("%w: entry bundle %s: %w", ErrTampered, path, err)
		}
		entries, err := parseBundle(raw)
		if err != nil {
			return nil, st, fmt.Errorf("%w: entry bundle %s: %w", ErrTampered, path, err)
		}
		if p != 0 && path == layout.EntriesPath(b, 0) && uint64(len(entries)) > n {
			entries = entries[:n]
		}
		if uint64(len(entries)) != n {
			return nil, st, fmt.Errorf("%w: entry bundle %s holds %d entries, want %d", ErrTampered, path, len(entries), n)
		}
		st.Bundles++
		if opts.checkFiles {
			if err := checkOtherBundles(ctx, r, b, p, entries, &st); err != nil {
				return nil, st, err
			}
		}
		skip := uint64(0)
		if b == from/layout.EntryBundleWidth {
			// The entries of this bundle already in the tree: the
			// rightmost level-0 tile holds their leaf hashes.
			skip = from % layout.EntryBundleWidth
			for i := range skip {
				if len(tv.bufs) == 0 || uint64(len(tv.bufs[0])) != skip || !bytes.Equal(hasher.HashLeaf(entries[i]), tv.bufs[0][i]) {
					return nil, st, fmt.Errorf("%w: entry bundle %s: entry %d differs from the one verified before", ErrInconsistent, path, b*layout.EntryBundleWidth+i)
				}
			}
		}
		for i, e := range entries[skip:] {
			idx := b*layout.EntryBundleWidth + skip + uint64(i)
			if err := fn(idx, e); err != nil {
				return nil, st, err
			}
			if err := t.rng.Append(hasher.HashLeaf(e), tv.visit); err != nil {
				return nil, st, err
			}
			if tv.err != nil {
				return nil, st, tv.err
			}
			if _, ok := opts.rootsAt[idx+1]; ok {
				r, err := t.rng.GetRootHash(nil)
				if err != nil {
					return nil, st, err
				}
				opts.rootsAt[idx+1] = r
			}
		}
	}
	t.size = size
	t.edge, t.idx = tv.bufs, tv.idx
	root := hasher.EmptyRoot()
	if size > 0 {
		var err error
		if root, err = t.rng.GetRootHash(nil); err != nil {
			return nil, st, err
		}
	}
	if opts.checkFiles {
		if err := tv.finish(); err != nil {
			return nil, st, err
		}
	}
	return root, st, nil
}

// checkOtherBundles compares the other stored versions of bundle b (older
// partial bundles, or a full bundle written past the checkpoint) with the
// entries of its canonical version, on the entries they share.
func checkOtherBundles(ctx context.Context, r Reader, b uint64, canonical uint8, entries [][]byte, st *scanStats) error {
	pl, ok := r.(partialLister)
	if !ok {
		return nil
	}
	widths, err := pl.partialWidths(layout.EntriesPath(b, 0))
	if err != nil {
		return err
	}
	if canonical != 0 {
		widths = append(widths, 0) // the full bundle, if one exists
	}
	for _, w := range widths {
		if w == canonical {
			continue
		}
		path := layout.EntriesPath(b, w)
		raw, err := r.ReadEntryBundle(ctx, b, w)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("%w: entry bundle %s: %w", ErrTampered, path, err)
		}
		other, err := parseBundle(raw)
		if err != nil {
			return fmt.Errorf("%w: entry bundle %s: %w", ErrTampered, path, err)
		}
		if want := int(w); w != 0 && len(other) != want {
			return fmt.Errorf("%w: entry bundle %s holds %d entries, want %d", ErrTampered, path, len(other), want)
		}
		for i := range min(len(other), len(entries)) {
			if !bytes.Equal(other[i], entries[i]) {
				return fmt.Errorf("%w: entry bundle %s: entry %d differs from the checkpointed log", ErrTampered, path, b*layout.EntryBundleWidth+uint64(i))
			}
		}
		st.ObsoleteFiles++
	}
	return nil
}

// tileVerifier receives every perfect subtree node as the tree is rebuilt,
// keeps the hashes of each level's rightmost tile and, with checkFiles,
// compares the nodes that tiles store with the tile files.
type tileVerifier struct {
	ctx        context.Context
	r          Reader
	size       uint64
	st         *scanStats
	checkFiles bool
	bufs       [][][]byte // per tile level: the hashes of the tile being filled
	idx        []uint64   // per tile level: its tile index
	// known is, per tile level, how many hashes of tile knownIdx were
	// verified before this scan (extending a tree).
	known    []int
	knownIdx []uint64
	err      error
}

func (tv *tileVerifier) visit(id compact.NodeID, hash []byte) {
	if tv.err != nil || id.Level%layout.TileHeight != 0 {
		return
	}
	l := int(id.Level / layout.TileHeight)
	for len(tv.bufs) <= l {
		tv.bufs = append(tv.bufs, make([][]byte, 0, layout.TileWidth))
		tv.idx = append(tv.idx, 0)
	}
	tv.bufs[l] = append(tv.bufs[l], bytes.Clone(hash))
	tv.idx[l] = id.Index / layout.TileWidth
	if len(tv.bufs[l]) == layout.TileWidth {
		if tv.checkFiles {
			tv.err = tv.check(uint64(l), tv.idx[l], tv.bufs[l], 0)
		}
		tv.bufs[l] = make([][]byte, 0, layout.TileWidth)
	}
}

// finish checks the partial tiles on the right edge of the tree.
func (tv *tileVerifier) finish() error {
	if tv.err != nil {
		return tv.err
	}
	for l, buf := range tv.bufs {
		if len(buf) == 0 {
			continue
		}
		w := layout.PartialTileSize(uint64(l), tv.idx[l], tv.size)
		if int(w) != len(buf) {
			return fmt.Errorf("auditlog: internal error: tile level %d holds %d hashes, layout says %d", l, len(buf), w)
		}
		if err := tv.check(uint64(l), tv.idx[l], buf, w); err != nil {
			return err
		}
	}
	return nil
}

// check compares the canonical tile (width p, 0 for full) with want, and
// every other stored version of the tile on the hashes they share.
func (tv *tileVerifier) check(level, index uint64, want [][]byte, p uint8) error {
	path := layout.TilePath(level, index, p)
	got, err := tv.readTile(level, index, p)
	if errors.Is(err, fs.ErrNotExist) && p != 0 {
		// Outgrown partial tile of a live log: the full one must agree.
		if got, err = tv.readTile(level, index, 0); err == nil && len(got) > len(want) {
			path, got = layout.TilePath(level, index, 0), got[:len(want)]
		}
	}
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: tile %s is missing", ErrTampered, path)
	}
	if err != nil {
		return err
	}
	if len(got) != len(want) {
		return fmt.Errorf("%w: tile %s holds %d hashes, want %d", ErrTampered, path, len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			if int(level) < len(tv.known) && index == tv.knownIdx[level] && i < tv.known[level] {
				return fmt.Errorf("%w: tile %s: hash %d differs from the one verified before", ErrInconsistent, path, i)
			}
			return fmt.Errorf("%w: tile %s: hash %d differs from the tree recomputed from the entries", ErrTampered, path, i)
		}
	}
	tv.st.Tiles++
	pl, ok := tv.r.(partialLister)
	if !ok {
		return nil
	}
	widths, err := pl.partialWidths(layout.TilePath(level, index, 0))
	if err != nil {
		return err
	}
	if p != 0 {
		widths = append(widths, 0)
	}
	for _, w := range widths {
		if w == p {
			continue
		}
		other, err := tv.readTile(level, index, w)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if w != 0 && len(other) != int(w) {
			return fmt.Errorf("%w: tile %s holds %d hashes, want %d", ErrTampered, layout.TilePath(level, index, w), len(other), w)
		}
		for i := range min(len(other), len(want)) {
			if !bytes.Equal(other[i], want[i]) {
				return fmt.Errorf("%w: tile %s: hash %d differs from the tree recomputed from the entries", ErrTampered, layout.TilePath(level, index, w), i)
			}
		}
		tv.st.ObsoleteFiles++
	}
	return nil
}

func (tv *tileVerifier) readTile(level, index uint64, p uint8) ([][]byte, error) {
	path := layout.TilePath(level, index, p)
	raw, err := tv.r.ReadTile(tv.ctx, level, index, p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("%w: tile %s: %w", ErrTampered, path, err)
	}
	hashes, err := parseTile(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: tile %s: %w", ErrTampered, path, err)
	}
	return hashes, nil
}
