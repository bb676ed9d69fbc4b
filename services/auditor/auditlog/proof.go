package auditlog

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	f_log "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/tessera/client"
	"golang.org/x/mod/sumdb/note"
)

// ProofHeader is the first line of a C2SP tlog-proof.
const ProofHeader = "c2sp.org/tlog-proof@v1"

// maxProofSize bounds a proof file: 64 hashes, an entry as extra data and a
// checkpoint with cosignatures.
const maxProofSize = 4*MaxEntrySize/3 + 64*45 + maxCheckpointSize + 256

// Proof is an inclusion proof in the C2SP tlog-proof format. Vigil puts the
// entry itself in the extra data, so a proof is self-contained.
type Proof struct {
	Extra      []byte
	Index      uint64
	Hashes     [][]byte
	Checkpoint []byte
}

// Marshal encodes the proof (https://c2sp.org/tlog-proof).
func (p *Proof) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(ProofHeader + "\n")
	if len(p.Extra) > 0 {
		b.WriteString("extra " + base64.StdEncoding.EncodeToString(p.Extra) + "\n")
	}
	b.WriteString("index " + strconv.FormatUint(p.Index, 10) + "\n")
	for _, h := range p.Hashes {
		b.WriteString(base64.StdEncoding.EncodeToString(h) + "\n")
	}
	b.WriteString("\n")
	b.Write(p.Checkpoint)
	return b.Bytes()
}

// ErrBadProofFormat is returned for text that is not a tlog-proof.
var ErrBadProofFormat = errors.New("auditlog: malformed tlog-proof")

// ParseProof decodes a C2SP tlog-proof. It checks the format only; use
// CheckProof to verify it.
func ParseProof(b []byte) (*Proof, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadProofFormat, fmt.Sprintf(format, args...))
	}
	if len(b) > maxProofSize {
		return nil, bad("%d bytes exceeds the limit of %d", len(b), maxProofSize)
	}
	head, cp, ok := bytes.Cut(b, []byte("\n\n"))
	if !ok {
		return nil, bad("no empty line before the checkpoint")
	}
	if len(cp) == 0 {
		return nil, bad("missing checkpoint")
	}
	lines := strings.Split(string(head), "\n")
	if lines[0] != ProofHeader {
		return nil, bad("first line is %q, want %q", truncate(lines[0]), ProofHeader)
	}
	lines = lines[1:]
	p := &Proof{Checkpoint: cp}
	if len(lines) > 0 && strings.HasPrefix(lines[0], "extra ") {
		extra, err := base64.StdEncoding.Strict().DecodeString(strings.TrimPrefix(lines[0], "extra "))
		if err != nil {
			return nil, bad("extra: %v", err)
		}
		p.Extra = extra
		lines = lines[1:]
	}
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "index ") {
		return nil, bad("missing index line")
	}
	idx := strings.TrimPrefix(lines[0], "index ")
	n, err := strconv.ParseUint(idx, 10, 64)
	if err != nil || strconv.FormatUint(n, 10) != idx {
		return nil, bad("index %q is not a decimal without leading zeroes", truncate(idx))
	}
	p.Index = n
	for _, l := range lines[1:] {
		h, err := base64.StdEncoding.Strict().DecodeString(l)
		if err != nil || len(h) != 32 {
			return nil, bad("proof line %q is not a base64 SHA-256 hash", truncate(l))
		}
		p.Hashes = append(p.Hashes, h)
	}
	if len(p.Hashes) > 64 {
		return nil, bad("%d proof hashes", len(p.Hashes))
	}
	return p, nil
}

func truncate(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}

// Prove builds an inclusion proof for entry index against the log's latest
// checkpoint, with the entry as extra data. With a verifier it first checks
// the checkpoint's signature; without one the checkpoint is used as found
// (the proof is checked with the key later anyway).
func Prove(ctx context.Context, d Reader, index uint64, v note.Verifier) (*Proof, error) {
	raw, err := d.ReadCheckpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("auditlog: read checkpoint: %w", err)
	}
	var size uint64
	var root []byte
	if v != nil {
		cp, err := OpenCheckpoint(raw, v)
		if err != nil {
			return nil, err
		}
		size, root = cp.Size, cp.Hash
	} else {
		body, _, ok := bytes.Cut(raw, []byte("\n\n"))
		if !ok {
			return nil, fmt.Errorf("%w: checkpoint is not a signed note", ErrTampered)
		}
		var cp f_log.Checkpoint
		if _, err := cp.Unmarshal(append(body, '\n')); err != nil {
			return nil, fmt.Errorf("%w: checkpoint: %w", ErrTampered, err)
		}
		size, root = cp.Size, cp.Hash
	}
	return proveAt(ctx, d, index, size, root, raw)
}

// ProveAt builds an inclusion proof for entry index against cp, a
// checkpoint of the log d reads that was verified before (for example by a
// Verifier), with the entry as extra data.
func ProveAt(ctx context.Context, d Reader, index uint64, cp Checkpoint) (*Proof, error) {
	return proveAt(ctx, d, index, cp.Size, cp.Hash, cp.Raw)
}

func proveAt(ctx context.Context, d Reader, index, size uint64, root, raw []byte) (*Proof, error) {
	if index >= size {
		return nil, fmt.Errorf("auditlog: entry %d is not in the log: its checkpoint has %d entries", index, size)
	}
	pb, err := client.NewProofBuilder(ctx, size, d.ReadTile)
	if err != nil {
		return nil, fmt.Errorf("auditlog: proof: %w", err)
	}
	hashes, err := pb.InclusionProof(ctx, index)
	if err != nil {
		return nil, fmt.Errorf("auditlog: inclusion proof for entry %d: %w", index, err)
	}
	bundle, err := client.GetEntryBundle(ctx, d.ReadEntryBundle, index/256, size)
	if err != nil {
		return nil, fmt.Errorf("auditlog: entry %d: %w", index, err)
	}
	if int(index%256) >= len(bundle.Entries) {
		return nil, fmt.Errorf("%w: entry bundle of entry %d is short", ErrTampered, index)
	}
	entry := bundle.Entries[index%256]
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, index, size, rfc6962.DefaultHasher.HashLeaf(entry), hashes, root); err != nil {
		return nil, fmt.Errorf("%w: the log's own proof for entry %d does not verify: %w", ErrTampered, index, err)
	}
	return &Proof{Extra: entry, Index: index, Hashes: hashes, Checkpoint: raw}, nil
}

// CheckProof verifies p with the log's verifier key: the checkpoint's
// signature and the inclusion of entry at p.Index in the checkpointed tree.
// A nil entry means the proof's extra data. It returns the checkpoint.
func CheckProof(p *Proof, v note.Verifier, entry []byte) (Checkpoint, error) {
	cp, err := OpenCheckpoint(p.Checkpoint, v)
	if err != nil {
		return Checkpoint{}, err
	}
	if entry == nil {
		entry = p.Extra
	}
	if entry == nil {
		return cp, fmt.Errorf("%w: the proof carries no entry and none was given", ErrBadProof)
	}
	if p.Index >= cp.Size {
		return cp, fmt.Errorf("%w: index %d is outside the checkpoint's tree of size %d", ErrBadProof, p.Index, cp.Size)
	}
	if err := proof.VerifyInclusion(rfc6962.DefaultHasher, p.Index, cp.Size, rfc6962.DefaultHasher.HashLeaf(entry), p.Hashes, cp.Hash); err != nil {
		return cp, fmt.Errorf("%w: entry %d: %w", ErrBadProof, p.Index, err)
	}
	return cp, nil
}
