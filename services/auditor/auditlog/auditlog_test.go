package auditlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/events"
)

const testOrigin = "test.vigil/audit"

type keyPair struct {
	skey, vkey string // file paths
	signer     note.Signer
	verifier   note.Verifier
}

func newKeys(t testing.TB, dir, origin string) keyPair {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	kp := keyPair{skey: filepath.Join(dir, "signer.key"), vkey: filepath.Join(dir, "signer.pub")}
	if err := GenerateKeyFiles(kp.skey, kp.vkey, origin); err != nil {
		t.Fatal(err)
	}
	var err error
	if kp.signer, err = LoadSigner(kp.skey); err != nil {
		t.Fatal(err)
	}
	if kp.verifier, err = LoadVerifier(kp.vkey); err != nil {
		t.Fatal(err)
	}
	return kp
}

// testEntries returns entries for stream sequences from..to, with event ids
// prefixed by tag.
func testEntries(t testing.TB, tag string, from, to int) [][]byte {
	t.Helper()
	var out [][]byte
	for seq := from; seq <= to; seq++ {
		vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm" + strconv.Itoa(seq%5))
		env, err := events.New(events.TypeState, "test", vm, events.State{VMKey: vm, From: events.StatusPending, To: events.StatusTrusted})
		if err != nil {
			t.Fatal(err)
		}
		env.ID = tag + "-" + strconv.Itoa(seq)
		body, _ := env.Marshal()
		out = append(out, EncodeMessage(Message{Stream: events.StreamEvents, Seq: uint64(seq), Subject: events.StateSubject(vm), Stored: time.Now(), Body: body}))
	}
	return out
}

// appendLog appends entries to the log in dir (creating it) in chunks,
// waiting for a checkpoint after each chunk, so that older partial tiles
// and bundles exist as they do in a live log. It returns the checkpoint
// after each chunk.
func appendLog(t testing.TB, dir string, signer note.Signer, entries [][]byte, chunk int) [][]byte {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	app, shutdown, lr, err := tessera.NewAppender(ctx, driver, tessera.NewAppendOptions().
		WithCheckpointSigner(signer).WithCheckpointInterval(100*time.Millisecond).WithBatching(256, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var cps [][]byte
	for start := 0; start < len(entries); start += chunk {
		var fs []tessera.IndexFuture
		for _, e := range entries[start:min(start+chunk, len(entries))] {
			fs = append(fs, app.Add(ctx, tessera.NewEntry(e)))
		}
		var last uint64
		for _, f := range fs {
			idx, err := f()
			if err != nil {
				t.Fatal(err)
			}
			last = idx.Index
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			cp, err := lr.ReadCheckpoint(ctx)
			if err == nil && cpSize(cp) > last {
				cps = append(cps, cp)
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("no checkpoint")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	return cps
}

func cpSize(cp []byte) uint64 {
	lines := strings.SplitN(string(cp), "\n", 3)
	if len(lines) < 3 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}

func verifyDir(t testing.TB, dir string, v note.Verifier, trusted ...[]byte) (*Report, error) {
	t.Helper()
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return Verify(context.Background(), d, v, VerifyOptions{Trusted: trusted})
}

// logFiles lists the tile and entry bundle files of a log.
func logFiles(t testing.TB, dir string) []string {
	t.Helper()
	var files []string
	for _, sub := range []string{"tile"} {
		err := filepath.WalkDir(filepath.Join(dir, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() {
				files = append(files, p)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	return files
}

func copyDir(t testing.TB, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyAcceptsGenuineLog(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	cps := appendLog(t, logDir, kp.signer, testEntries(t, "a", 1, 700), 130)
	rep, err := verifyDir(t, logDir, kp.verifier, cps[0], cps[2], cps[len(cps)-1])
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if rep.Size != 700 || rep.Events != 700 || rep.LastSeq != 700 || len(rep.TrustedSizes) != 3 || rep.Tiles < 4 || rep.OtherFiles == 0 {
		t.Fatalf("report: %+v", rep)
	}
	// An empty log verifies too.
	empty := filepath.Join(dir, "empty")
	appendLog(t, empty, kp.signer, nil, 1)
	if _, err := verifyDir(t, empty, kp.verifier); err != nil {
		t.Fatalf("empty log: %v", err)
	}
}

// TestVerifyDetectsFlippedByte flips one byte in every tile and entry bundle
// file of a log (full, partial and older partial versions), one at a time:
// verification must fail for each.
func TestVerifyDetectsFlippedByte(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	appendLog(t, logDir, kp.signer, testEntries(t, "a", 1, 600), 170)
	files := logFiles(t, logDir)
	var tiles, bundles, partials int
	for i, f := range files {
		orig, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case strings.Contains(f, "/tile/entries/"):
			bundles++
		default:
			tiles++
		}
		if strings.Contains(f, ".p/") {
			partials++
		}
		flipped := bytes.Clone(orig)
		off := (i*7919 + 13) % len(flipped)
		flipped[off] ^= 0x01
		if err := os.WriteFile(f, flipped, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := verifyDir(t, logDir, kp.verifier); !errors.Is(err, ErrTampered) {
			rel, _ := filepath.Rel(logDir, f)
			t.Errorf("flipped byte %d of %s: Verify = %v, want ErrTampered", off, rel, err)
		}
		if err := os.WriteFile(f, orig, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if tiles < 5 || bundles < 3 || partials < 4 {
		t.Fatalf("log too small to be a useful test: %d tiles, %d bundles, %d partial files", tiles, bundles, partials)
	}
	if _, err := verifyDir(t, logDir, kp.verifier); err != nil {
		t.Fatalf("restored log: %v", err)
	}
}

func TestVerifyDetectsTruncation(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	genuine := filepath.Join(dir, "log")
	cps := appendLog(t, genuine, kp.signer, testEntries(t, "a", 1, 600), 300)

	tests := []struct {
		name    string
		tamper  func(t *testing.T, dir string)
		trusted [][]byte
	}{
		{name: "last entry bundle removed", tamper: func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "tile/entries/002.p/88")))
		}},
		{name: "entry bundle cut short", tamper: func(t *testing.T, dir string) {
			p := filepath.Join(dir, "tile/entries/001")
			b, _ := os.ReadFile(p)
			must(t, os.WriteFile(p, b[:len(b)-40], 0o644))
		}},
		{name: "entries directory emptied", tamper: func(t *testing.T, dir string) {
			must(t, os.RemoveAll(filepath.Join(dir, "tile/entries")))
		}},
		{name: "tile removed", tamper: func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "tile/0/001")))
		}},
		{name: "checkpoint removed", tamper: func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "checkpoint")))
		}},
		{name: "rolled back to an older genuine checkpoint", trusted: [][]byte{cps[1]}, tamper: func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "checkpoint"), cps[0], 0o644))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "log")
			copyDir(t, genuine, d)
			tt.tamper(t, d)
			if _, err := verifyDir(t, d, kp.verifier, tt.trusted...); !errors.Is(err, ErrTampered) {
				t.Fatalf("Verify = %v, want ErrTampered", err)
			}
		})
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestVerifyDetectsRewriteAndFork rewrites a log from some entry on and
// signs it with another key (under the same name, and under another
// name), and forks it with the genuine key: the first two fail against the
// genuine public key, the fork against a trusted earlier checkpoint.
func TestVerifyDetectsRewriteAndFork(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	genuineEntries := testEntries(t, "a", 1, 500)
	genuine := filepath.Join(dir, "genuine")
	cps := appendLog(t, genuine, kp.signer, genuineEntries, 250)
	trusted := cps[0] // size 250

	rewritten := append(append([][]byte{}, genuineEntries[:200]...), testEntries(t, "forged", 201, 520)...)

	t.Run("re-signed with another key of the same name", func(t *testing.T) {
		evil := newKeys(t, filepath.Join(t.TempDir(), "k"), testOrigin)
		d := filepath.Join(t.TempDir(), "log")
		appendLog(t, d, evil.signer, rewritten, 520)
		if _, err := verifyDir(t, d, kp.verifier); !errors.Is(err, ErrTampered) {
			t.Fatalf("Verify = %v, want ErrTampered", err)
		}
		if _, err := verifyDir(t, d, evil.verifier); err != nil {
			t.Fatalf("the forger's own key should verify its log: %v", err)
		}
	})
	t.Run("re-signed with another key and name", func(t *testing.T) {
		evil := newKeys(t, filepath.Join(t.TempDir(), "k"), "evil.example/log")
		d := filepath.Join(t.TempDir(), "log")
		appendLog(t, d, evil.signer, rewritten, 520)
		if _, err := verifyDir(t, d, kp.verifier); !errors.Is(err, ErrTampered) {
			t.Fatalf("Verify = %v, want ErrTampered", err)
		}
	})
	t.Run("rewritten entries under the genuine checkpoint", func(t *testing.T) {
		evil := newKeys(t, filepath.Join(t.TempDir(), "k"), testOrigin)
		d := filepath.Join(t.TempDir(), "log")
		appendLog(t, d, evil.signer, rewritten[:500], 500)
		must(t, os.WriteFile(filepath.Join(d, "checkpoint"), cps[len(cps)-1], 0o644))
		if _, err := verifyDir(t, d, kp.verifier); !errors.Is(err, ErrTampered) {
			t.Fatalf("Verify = %v, want ErrTampered", err)
		}
	})
	t.Run("fork signed with the genuine key", func(t *testing.T) {
		d := filepath.Join(t.TempDir(), "log")
		appendLog(t, d, kp.signer, rewritten, 520)
		if _, err := verifyDir(t, d, kp.verifier); err != nil {
			t.Fatalf("a fork is self-consistent: %v", err)
		}
		_, err := verifyDir(t, d, kp.verifier, trusted)
		if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), "inconsistent with trusted checkpoint") {
			t.Fatalf("Verify with trusted checkpoint = %v, want a fork", err)
		}
		// The genuine log is consistent with the same trusted checkpoint.
		if _, err := verifyDir(t, genuine, kp.verifier, trusted); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("trusted checkpoint signed by another key", func(t *testing.T) {
		evil := newKeys(t, filepath.Join(t.TempDir(), "k"), testOrigin)
		d := filepath.Join(t.TempDir(), "log")
		cps := appendLog(t, d, evil.signer, rewritten, 520)
		if _, err := verifyDir(t, genuine, kp.verifier, cps[0]); !errors.Is(err, ErrTampered) {
			t.Fatalf("Verify = %v, want ErrTampered", err)
		}
	})
}

func TestVerifyChecksRecords(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	tests := []struct {
		name    string
		entries [][]byte
		want    string
	}{
		{name: "duplicate sequence", entries: append(testEntries(t, "a", 1, 5), testEntries(t, "b", 5, 6)...), want: "more than once"},
		{name: "missing sequence", entries: append(testEntries(t, "a", 1, 5), testEntries(t, "a", 7, 8)...), want: "missing"},
		{name: "not starting at 1", entries: testEntries(t, "a", 3, 8), want: "missing"},
		{name: "not a record", entries: append(testEntries(t, "a", 1, 2), []byte(`{"hello":"world"}`)), want: "malformed record"},
		{name: "other stream", entries: append(testEntries(t, "a", 1, 2), EncodeGap("OTHER", 3, 3, "x")), want: "stream"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := filepath.Join(t.TempDir(), "log")
			appendLog(t, d, kp.signer, tt.entries, 100)
			_, err := verifyDir(t, d, kp.verifier)
			if !errors.Is(err, ErrTampered) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Verify = %v, want ErrTampered mentioning %q", err, tt.want)
			}
		})
	}
	// Gaps and sequences repaired out of order are accounted for.
	ok := [][]byte{EncodeGap(events.StreamEvents, 1, 2, "expired")}
	ok = append(ok, testEntries(t, "a", 3, 4)...)
	ok = append(ok, testEntries(t, "a", 7, 8)...)
	ok = append(ok, testEntries(t, "a", 5, 6)...)
	d := filepath.Join(t.TempDir(), "log")
	appendLog(t, d, kp.signer, ok, 100)
	rep, err := verifyDir(t, d, kp.verifier)
	if err != nil {
		t.Fatal(err)
	}
	if rep.LastSeq != 8 || rep.Gaps != 1 || rep.OutOfOrder == 0 {
		t.Fatalf("report %+v", rep)
	}
}

func TestProofs(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	entries := testEntries(t, "a", 1, 300)
	appendLog(t, logDir, kp.signer, entries, 300)
	d, err := OpenDir(logDir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, idx := range []uint64{0, 1, 255, 256, 299} {
		p, err := Prove(ctx, d, idx, nil)
		if err != nil {
			t.Fatalf("Prove(%d): %v", idx, err)
		}
		if !bytes.Equal(p.Extra, entries[idx]) {
			t.Fatalf("proof %d carries the wrong entry", idx)
		}
		parsed, err := ParseProof(p.Marshal())
		if err != nil {
			t.Fatalf("ParseProof: %v", err)
		}
		if _, err := CheckProof(parsed, kp.verifier, nil); err != nil {
			t.Fatalf("CheckProof(%d): %v", idx, err)
		}
		// A changed entry fails, given or carried.
		changed := bytes.Replace(entries[idx], []byte(`"a-`), []byte(`"b-`), 1)
		if _, err := CheckProof(parsed, kp.verifier, changed); !errors.Is(err, ErrBadProof) {
			t.Fatalf("changed entry: %v, want ErrBadProof", err)
		}
		parsed.Extra = changed
		if _, err := CheckProof(parsed, kp.verifier, nil); !errors.Is(err, ErrBadProof) {
			t.Fatalf("changed extra: %v, want ErrBadProof", err)
		}
	}
	p, err := Prove(ctx, d, 17, kp.verifier)
	if err != nil {
		t.Fatal(err)
	}
	p.Hashes[0][0] ^= 1
	if _, err := CheckProof(p, kp.verifier, nil); !errors.Is(err, ErrBadProof) {
		t.Fatalf("changed proof hash: %v", err)
	}
	p.Hashes[0][0] ^= 1
	p.Index = 18
	if _, err := CheckProof(p, kp.verifier, nil); !errors.Is(err, ErrBadProof) {
		t.Fatalf("changed index: %v", err)
	}
	other := newKeys(t, filepath.Join(dir, "other"), testOrigin)
	if _, err := CheckProof(p, other.verifier, nil); !errors.Is(err, ErrTampered) {
		t.Fatalf("other key: %v", err)
	}
	if _, err := Prove(ctx, d, 300, nil); err == nil {
		t.Fatal("proof for an entry beyond the checkpoint")
	}
}

func TestParseProofRejects(t *testing.T) {
	good := "c2sp.org/tlog-proof@v1\nindex 3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\norigin\n4\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— origin AAAA\n"
	if _, err := ParseProof([]byte(good)); err != nil {
		t.Fatalf("good proof: %v", err)
	}
	for _, bad := range []string{
		"",
		"c2sp.org/tlog-proof@v2\nindex 3\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nindex 03\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nindex -1\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nextra !!\nindex 1\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nindex 1\nAAAA\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nindex 1\n",
		"c2sp.org/tlog-proof@v1\nindex 1\n\n",
		"c2sp.org/tlog-proof@v1\n\ncp\n",
		"c2sp.org/tlog-proof@v1\nindex 1\n\n" + strings.Repeat("x", maxProofSize),
	} {
		if _, err := ParseProof([]byte(bad)); !errors.Is(err, ErrBadProofFormat) {
			t.Errorf("ParseProof(%.40q) = %v, want ErrBadProofFormat", bad, err)
		}
	}
}

func FuzzParseProof(f *testing.F) {
	f.Add([]byte("c2sp.org/tlog-proof@v1\nextra AAAA\nindex 3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\norigin\n4\nAAAA\n\n— origin AAAA\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParseProof(b)
		if err != nil {
			return
		}
		again, err := ParseProof(p.Marshal())
		if err != nil {
			t.Fatalf("re-parse of marshalled proof: %v", err)
		}
		if again.Index != p.Index || len(again.Hashes) != len(p.Hashes) || !bytes.Equal(again.Extra, p.Extra) || !bytes.Equal(again.Checkpoint, p.Checkpoint) {
			t.Fatalf("round trip changed the proof")
		}
	})
}

func TestSearch(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	appendLog(t, logDir, kp.signer, testEntries(t, "a", 1, 50), 50)
	d, _ := OpenDir(logDir)
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm3")
	var got []uint64
	res, err := Search(context.Background(), d, kp.verifier, func(r *Record) bool { return r.VMKey() == vm }, func(idx uint64, r *Record) error {
		got = append(got, r.Seq)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Verified || res.Size != 50 || fmt.Sprint(got) != "[3 8 13 18 23 28 33 38 43 48]" {
		t.Fatalf("search: %+v %v", res, got)
	}
	// A tampered entry fails a verified search.
	p := filepath.Join(logDir, "tile/entries/000.p/50")
	b, _ := os.ReadFile(p)
	must(t, os.WriteFile(p, bytes.Replace(b, []byte(`"a-3"`), []byte(`"x-3"`), 1), 0o644))
	if _, err := Search(context.Background(), d, kp.verifier, func(*Record) bool { return true }, func(uint64, *Record) error { return nil }); !errors.Is(err, ErrTampered) {
		t.Fatalf("tampered search: %v", err)
	}
}
