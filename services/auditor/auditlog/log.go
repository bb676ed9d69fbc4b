package auditlog

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"

	f_log "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/tessera/api"
	"github.com/transparency-dev/tessera/api/layout"
	"golang.org/x/mod/sumdb/note"
)

// Bounds on the files of a log directory.
const (
	maxCheckpointSize = 64 << 10
	maxTileSize       = layout.TileWidth * 32
	maxBundleSize     = layout.EntryBundleWidth * (2 + MaxEntrySize)
)

// Errors reported by the readers and verifiers.
var (
	// ErrTampered means the log's content contradicts its signed checkpoint
	// or a trusted checkpoint: modified, truncated, forked or re-signed.
	ErrTampered = errors.New("audit log verification failed")
	// ErrBadProof means an inclusion proof does not verify.
	ErrBadProof = errors.New("inclusion proof does not verify")
)

// Reader reads a log in the C2SP tlog-tiles layout: a directory (Dir) or a
// log served over HTTP (HTTPLog). It is the read side of Tessera's
// LogReader; a file that does not exist is reported as fs.ErrNotExist.
type Reader interface {
	// ReadCheckpoint returns the log's latest checkpoint, unverified.
	ReadCheckpoint(ctx context.Context) ([]byte, error)
	// ReadTile returns a tile; p is its width for a partial tile, 0 for a
	// full one.
	ReadTile(ctx context.Context, level, index uint64, p uint8) ([]byte, error)
	// ReadEntryBundle returns an entry bundle; p as for ReadTile.
	ReadEntryBundle(ctx context.Context, index uint64, p uint8) ([]byte, error)
}

// partialLister is implemented by readers that can list the older partial
// versions of a tile or bundle (a directory can, HTTP cannot), which Verify
// then checks too.
type partialLister interface {
	partialWidths(path string) ([]uint8, error)
}

var _ Reader = (*Dir)(nil)

// Dir is a read-only view of a log directory in the C2SP tlog-tiles layout
// (checkpoint, tile/..., entries/...).
type Dir struct {
	root string
}

// OpenDir opens the log in directory root.
func OpenDir(root string) (*Dir, error) {
	st, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("auditlog: log directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("auditlog: %s is not a directory", root)
	}
	return &Dir{root: root}, nil
}

// Root is the directory.
func (d *Dir) Root() string { return d.root }

// ReadCheckpoint returns the log's latest checkpoint, unverified.
func (d *Dir) ReadCheckpoint(context.Context) ([]byte, error) {
	return readBounded(filepath.Join(d.root, layout.CheckpointPath), maxCheckpointSize)
}

// ReadTile returns a tile; p is its width for a partial tile, 0 for a full one.
func (d *Dir) ReadTile(_ context.Context, level, index uint64, p uint8) ([]byte, error) {
	return readBounded(filepath.Join(d.root, layout.TilePath(level, index, p)), maxTileSize)
}

// ReadEntryBundle returns an entry bundle; p as for ReadTile.
func (d *Dir) ReadEntryBundle(_ context.Context, index uint64, p uint8) ([]byte, error) {
	return readBounded(filepath.Join(d.root, layout.EntriesPath(index, p)), maxBundleSize)
}

// partialWidths lists the widths of the partial versions of a tile or
// bundle that exist next to the full one (path is its full-size path).
func (d *Dir) partialWidths(path string) ([]uint8, error) {
	ents, err := os.ReadDir(filepath.Join(d.root, path+".p"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("auditlog: %w", err)
	}
	var ws []uint8
	for _, e := range ents {
		w, err := strconv.ParseUint(e.Name(), 10, 8)
		if err != nil || w == 0 || strconv.FormatUint(w, 10) != e.Name() {
			continue // not a tlog-tiles name (for example a writer's temporary file)
		}
		ws = append(ws, uint8(w))
	}
	return ws, nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrTampered, path, limit)
	}
	return b, nil
}

// Checkpoint is a verified checkpoint.
type Checkpoint struct {
	Origin string
	Size   uint64
	Hash   []byte
	// Raw is the signed note as read.
	Raw []byte
}

// OpenCheckpoint verifies a signed checkpoint with the log's verifier key
// (whose name is the log's origin) and parses it.
func OpenCheckpoint(raw []byte, v note.Verifier) (Checkpoint, error) {
	cp, _, _, err := f_log.ParseCheckpoint(raw, v.Name(), v)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint: %w", ErrTampered, err)
	}
	if len(cp.Hash) != 32 {
		return Checkpoint{}, fmt.Errorf("%w: checkpoint root hash is %d bytes", ErrTampered, len(cp.Hash))
	}
	return Checkpoint{Origin: cp.Origin, Size: cp.Size, Hash: cp.Hash, Raw: raw}, nil
}

// parseBundle splits an entry bundle into its entries.
func parseBundle(raw []byte) ([][]byte, error) {
	var b api.EntryBundle
	if err := b.UnmarshalText(raw); err != nil {
		return nil, err
	}
	return b.Entries, nil
}

// parseTile splits a hash tile into its hashes.
func parseTile(raw []byte) ([][]byte, error) {
	if len(raw)%32 != 0 || len(raw) == 0 || len(raw) > maxTileSize {
		return nil, fmt.Errorf("tile of %d bytes is not 1..256 hashes", len(raw))
	}
	var t api.HashTile
	if err := t.UnmarshalText(raw); err != nil {
		return nil, err
	}
	return t.Nodes, nil
}
