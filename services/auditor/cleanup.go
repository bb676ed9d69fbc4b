package auditor

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	"github.com/transparency-dev/tessera/api/layout"
)

// maxUncommitted bounds how far past the integrated size a write cut short
// can have left files: one Tessera flush, at most the largest BatchSize.
const maxUncommitted = 1 << 16

// removeUncommitted deletes the entry bundles and tiles that a write cut
// short (kill -9 between writing them and recording the new tree size) left
// beyond the integrated tree of the given size. Their content was never
// part of the log and may differ from what is logged at those positions
// after the restart, so they must not linger next to the real files. It
// runs before anything is appended, under the writer lock. It returns how
// many files or directories it removed.
func removeUncommitted(dir string, size uint64) (int, error) {
	removed := 0
	rm := func(rel string) error {
		p := filepath.Join(dir, rel)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err := os.RemoveAll(p); err != nil {
			return err
		}
		removed++
		return nil
	}
	// clean handles one tile level (or the entry bundles): tile idx holds
	// width elements at this size; its wider partial versions and its
	// full version are uncommitted, and so is every tile after it.
	clean := func(path func(idx uint64, p uint8) string, idx, width, last uint64) error {
		wider, err := partialWidthsAbove(filepath.Join(dir, path(idx, 0)+".p"), width)
		if err != nil {
			return err
		}
		for _, w := range wider {
			if err := rm(path(idx, w)); err != nil {
				return err
			}
		}
		if err := rm(path(idx, 0)); err != nil {
			return err
		}
		for i := idx + 1; i <= last; i++ {
			if err := rm(path(i, 0)); err != nil {
				return err
			}
			if err := rm(path(i, 0) + ".p"); err != nil {
				return err
			}
		}
		return nil
	}
	end := size + maxUncommitted
	w := uint64(layout.EntryBundleWidth)
	if err := clean(layout.EntriesPath, size/w, size%w, end/w); err != nil {
		return removed, err
	}
	for level := uint64(0); ; level++ {
		shift := layout.TileHeight * level
		nodes, endNodes := size>>shift, end>>shift // perfect subtrees at this tile level
		tp := func(idx uint64, p uint8) string { return layout.TilePath(level, idx, p) }
		if err := clean(tp, nodes/layout.TileWidth, nodes%layout.TileWidth, endNodes/layout.TileWidth); err != nil {
			return removed, err
		}
		if endNodes < layout.TileWidth {
			return removed, nil
		}
	}
}

// partialWidthsAbove lists the partial versions in dir wider than width.
func partialWidthsAbove(dir string, width uint64) ([]uint8, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ws []uint8
	for _, e := range ents {
		n, err := strconv.ParseUint(e.Name(), 10, 8)
		if err != nil || strconv.FormatUint(n, 10) != e.Name() {
			continue
		}
		if n > width {
			ws = append(ws, uint8(n))
		}
	}
	return ws, nil
}
