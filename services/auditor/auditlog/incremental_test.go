package auditlog

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"
)

// switchReader reads whichever log it was last pointed at: a log swapped
// under a Verifier.
type switchReader struct{ Reader }

func openDir(t testing.TB, dir string) *Dir {
	t.Helper()
	d, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestVerifierIncremental grows a log in three steps; each Update reads
// only the bundles of the new entries, hands over exactly the new records
// and ends where Verify of the whole log does.
func TestVerifierIncremental(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	entries := testEntries(t, "a", 1, 1000)
	appendLog(t, logDir, kp.signer, entries[:300], 300)
	vf := NewVerifier(openDir(t, logDir), kp.verifier)
	steps := []struct{ to, bundles int }{{300, 2}, {700, 2}, {1000, 2}, {1000, 0}}
	from, appended := 0, 300
	for _, s := range steps {
		if s.to > appended {
			appendLog(t, logDir, kp.signer, entries[appended:s.to], s.to-appended)
			appended = s.to
		}
		var got []uint64
		rep, err := vf.Update(context.Background(), func(index uint64, r *Record) error {
			if r.Seq != index+1 {
				return fmt.Errorf("entry %d holds sequence %d", index, r.Seq)
			}
			got = append(got, index)
			return nil
		})
		if err != nil {
			t.Fatalf("Update to %d: %v", s.to, err)
		}
		if rep.From != uint64(from) || rep.Size != uint64(s.to) || len(got) != s.to-from || int(rep.Bundles) != s.bundles || rep.Events != uint64(s.to) || rep.LastSeq != uint64(s.to) {
			t.Fatalf("Update to %d: from %d, size %d, %d records, %d bundles, %d events, last seq %d", s.to, rep.From, rep.Size, len(got), rep.Bundles, rep.Events, rep.LastSeq)
		}
		if len(got) > 0 && got[0] != uint64(from) {
			t.Fatalf("Update to %d: first new record %d, want %d", s.to, got[0], from)
		}
		full, err := verifyDir(t, logDir, kp.verifier)
		if err != nil {
			t.Fatal(err)
		}
		if string(full.Root) != string(rep.Root) {
			t.Fatalf("Update to %d: root differs from Verify's", s.to)
		}
		from = s.to
	}
}

// TestVerifierDetectsRewrite verifies a genuine log of 300 entries, then
// puts another log in its place: truncated, forked before or inside the
// last bundle read, the same size with another root, signed by another key.
// Each fails, and keeps failing: the verifier does not start again from
// scratch, and still accepts the genuine log's growth afterwards.
func TestVerifierDetectsRewrite(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	genuineEntries := testEntries(t, "a", 1, 500)
	genuine := filepath.Join(dir, "genuine")
	appendLog(t, genuine, kp.signer, genuineEntries[:300], 300)
	grown := filepath.Join(dir, "grown")
	copyDir(t, genuine, grown)
	appendLog(t, grown, kp.signer, genuineEntries[300:], 200)

	// changed is the genuine log with entry i forged (the same sequence).
	changed := func(i int) [][]byte {
		out := append([][]byte{}, genuineEntries...)
		out[i] = testEntries(t, "forged", i+1, i+1)[0]
		return out
	}
	evil := newKeys(t, filepath.Join(dir, "evil"), testOrigin)
	for _, tc := range []struct {
		name        string
		signer      note.Signer
		entries     [][]byte
		want        error
		wantMessage string
	}{
		{"truncated", kp.signer, genuineEntries[:200], ErrInconsistent, "truncated or rolled back"},
		{"entry before the last bundle read changed", kp.signer, changed(100), ErrInconsistent, "tile tile/1/000.p/1: hash 0 differs from the one verified before"},
		{"entry of the shared bundle changed", kp.signer, changed(260), ErrInconsistent, "entry 260 differs from the one verified before"},
		{"same size, another root", kp.signer, changed(100)[:300], ErrInconsistent, "another root"},
		{"genuine files, a fork's checkpoint", kp.signer, nil, ErrInconsistent, "not the verified log of size 300 extended by the entries 300..499"},
		{"checkpoint from another key", evil.signer, genuineEntries, ErrTampered, "checkpoint"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sw := &switchReader{openDir(t, genuine)}
			vf := NewVerifier(sw, kp.verifier)
			if _, err := vf.Update(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			other := filepath.Join(t.TempDir(), "log")
			if tc.entries == nil {
				// The genuine files under a checkpoint of a fork
				// signed with the log's key.
				forked := appendLog(t, filepath.Join(t.TempDir(), "fork"), kp.signer, changed(100), 500)
				copyDir(t, grown, other)
				must(t, os.WriteFile(filepath.Join(other, "checkpoint"), forked[0], 0o644))
			} else {
				appendLog(t, other, tc.signer, tc.entries, len(tc.entries))
			}
			sw.Reader = openDir(t, other)
			for range 2 {
				_, err := vf.Update(context.Background(), nil)
				if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.wantMessage) {
					t.Fatalf("Update = %v, want %v (%q)", err, tc.want, tc.wantMessage)
				}
				if cp, _ := vf.Checkpoint(); cp.Size != 300 {
					t.Fatalf("the verified checkpoint moved to size %d", cp.Size)
				}
			}
			sw.Reader = openDir(t, grown)
			rep, err := vf.Update(context.Background(), nil)
			if err != nil || rep.From != 300 || rep.Size != 500 {
				t.Fatalf("the genuine log grown: %+v, %v", rep, err)
			}
		})
	}
}

// logHandler serves a log directory as the auditor does at /log/.
func logHandler(dir string) http.Handler {
	return http.StripPrefix("/log/", http.FileServer(http.Dir(dir)))
}

// TestHTTPLog reads a log over HTTP as from its directory, and refuses a
// server whose responses are larger than the files they stand for, or
// slower than the timeout.
func TestHTTPLog(t *testing.T) {
	dir := t.TempDir()
	kp := newKeys(t, filepath.Join(dir, "keys"), testOrigin)
	logDir := filepath.Join(dir, "log")
	appendLog(t, logDir, kp.signer, testEntries(t, "a", 1, 600), 600)
	srv := httptest.NewServer(logHandler(logDir))
	defer srv.Close()
	h, err := OpenURL(srv.URL+"/log/", HTTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := NewVerifier(h, kp.verifier).Update(context.Background(), nil)
	if err != nil || rep.Size != 600 || rep.Tiles < 3 {
		t.Fatalf("over HTTP: %+v, %v", rep, err)
	}
	if _, err := Verify(context.Background(), h, kp.verifier, VerifyOptions{}); err != nil {
		t.Fatalf("Verify over HTTP: %v", err)
	}
	if p, err := Prove(context.Background(), h, 599, kp.verifier); err != nil {
		t.Fatalf("Prove over HTTP: %v", err)
	} else if _, err := CheckProof(p, kp.verifier, nil); err != nil {
		t.Fatal(err)
	}

	huge := func(path string, declare bool) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !strings.HasSuffix(r.URL.Path, path) {
				logHandler(logDir).ServeHTTP(w, r)
				return
			}
			if declare {
				w.Header().Set("Content-Length", fmt.Sprint(64<<20))
			}
			chunk := make([]byte, 32<<10)
			for range 2048 { // 64 MiB unless the client stops reading
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		})
	}
	for _, tc := range []struct {
		name string
		h    http.Handler
	}{
		{"huge checkpoint", huge("/checkpoint", false)},
		{"huge entry bundle, declared", huge("/tile/entries/002.p/88", true)},
		{"huge tile", huge("/tile/0/000", false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.h)
			defer srv.Close()
			h, err := OpenURL(srv.URL+"/log/", HTTPOptions{})
			if err != nil {
				t.Fatal(err)
			}
			_, err = NewVerifier(h, kp.verifier).Update(context.Background(), nil)
			if err == nil || !strings.Contains(err.Error(), "larger than") && !strings.Contains(err.Error(), "declares") {
				t.Fatalf("Update = %v, want a response too large", err)
			}
		})
	}
	t.Run("slow", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done() // never answers; the client gives up
		}))
		defer srv.Close()
		h, err := OpenURL(srv.URL+"/log/", HTTPOptions{Timeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err = NewVerifier(h, kp.verifier).Update(context.Background(), nil)
		if err == nil || !strings.Contains(err.Error(), "no complete response within 200ms") {
			t.Fatalf("Update = %v, want a timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Fatalf("the request took %v", d)
		}
	})
	for _, bad := range []string{"ftp://x/log/", "http:///log/", "http://x/log/?a=b", "http://u:p@x/log/"} {
		if _, err := OpenURL(bad, HTTPOptions{}); err == nil {
			t.Errorf("OpenURL(%q) accepted", bad)
		}
	}
}

// growingLog keeps an appender open on a log so that a benchmark can grow
// it between timed rounds.
type growingLog struct {
	ctx context.Context
	app *tessera.Appender
	lr  tessera.LogReader
	seq int
}

func newGrowingLog(b testing.TB, dir string, signer note.Signer) *growingLog {
	ctx, cancel := context.WithCancel(context.Background())
	driver, err := posix.New(ctx, posix.Config{Path: dir})
	if err != nil {
		b.Fatal(err)
	}
	app, shutdown, lr, err := tessera.NewAppender(ctx, driver, tessera.NewAppendOptions().
		WithCheckpointSigner(signer).WithCheckpointInterval(100*time.Millisecond).WithBatching(1024, 5*time.Millisecond))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = shutdown(ctx); cancel() })
	return &growingLog{ctx: ctx, app: app, lr: lr}
}

// add appends n entries and waits for a checkpoint covering them.
func (g *growingLog) add(b testing.TB, n int) {
	var fs []tessera.IndexFuture
	for _, e := range testEntries(b, "g", g.seq+1, g.seq+n) {
		fs = append(fs, g.app.Add(g.ctx, tessera.NewEntry(e)))
	}
	g.seq += n
	for _, f := range fs {
		if _, err := f(); err != nil {
			b.Fatal(err)
		}
	}
	deadline := time.Now().Add(time.Minute)
	for {
		cp, err := g.lr.ReadCheckpoint(g.ctx)
		if err == nil && cpSize(cp) >= uint64(g.seq) {
			return
		}
		if time.Now().After(deadline) {
			b.Fatal("no checkpoint")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// BenchmarkVerifierUpdate times one incremental round after 100 entries
// were appended, to logs of 1,000 and 100,000 entries: the round's cost
// follows the new entries, not the log's size. It reports the time per
// round (ms/round) and the bundles and tiles read per round.
//
//	go test -run '^$' -bench VerifierUpdate -benchtime 20x ./services/auditor/auditlog
func BenchmarkVerifierUpdate(b *testing.B) {
	for _, size := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("log=%d", size), func(b *testing.B) {
			dir := b.TempDir()
			kp := newKeys(b, filepath.Join(dir, "keys"), testOrigin)
			g := newGrowingLog(b, filepath.Join(dir, "log"), kp.signer)
			for done := 0; done < size; done += 10_000 {
				g.add(b, min(10_000, size-done))
			}
			vf := NewVerifier(openDir(b, filepath.Join(dir, "log")), kp.verifier)
			start := time.Now()
			if _, err := vf.Update(context.Background(), nil); err != nil {
				b.Fatal(err)
			}
			first := time.Since(start)
			var read, elapsed float64
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				g.add(b, 100)
				b.StartTimer()
				t0 := time.Now()
				rep, err := vf.Update(context.Background(), nil)
				elapsed += float64(time.Since(t0).Microseconds()) / 1000
				if err != nil {
					b.Fatal(err)
				}
				if rep.Size-rep.From < 100 {
					b.Fatalf("round from %d to %d", rep.From, rep.Size)
				}
				read += float64(rep.Bundles + rep.Tiles)
			}
			b.ReportMetric(elapsed/float64(b.N), "ms/round")
			b.ReportMetric(read/float64(b.N), "files/round")
			b.ReportMetric(float64(first.Microseconds())/1000, "first-round-ms")
		})
	}
}
