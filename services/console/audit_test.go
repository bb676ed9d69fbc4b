package console

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/storage/posix"
	"golang.org/x/mod/sumdb/note"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

const testOrigin = "test.vigil/audit"

// auditKeys makes a log key pair in dir.
func auditKeys(t *testing.T, dir string) (note.Signer, string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	skey, vkey := filepath.Join(dir, "signer.key"), filepath.Join(dir, "signer.pub")
	if err := auditlog.GenerateKeyFiles(skey, vkey, testOrigin); err != nil {
		t.Fatal(err)
	}
	s, err := auditlog.LoadSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s, vkey
}

// eventEntries returns the audit log entries of VIGIL_EVENTS sequences
// from..to, as the auditor writes them; tag goes into the event ids.
func eventEntries(t *testing.T, tag string, from, to int) [][]byte {
	t.Helper()
	var out [][]byte
	for seq := from; seq <= to; seq++ {
		vm := events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", seq%5))
		env, err := events.New(events.TypeState, "test", vm, events.State{VMKey: vm, From: events.StatusPending, To: events.StatusTrusted})
		if err != nil {
			t.Fatal(err)
		}
		env.ID = fmt.Sprintf("%s-%d", tag, seq)
		body, err := env.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, auditlog.EncodeMessage(auditlog.Message{Stream: events.StreamEvents, Seq: uint64(seq), Subject: events.StateSubject(vm), Stored: time.Now(), Body: body}))
	}
	return out
}

// writeLog appends entries to the Tessera POSIX log in dir (creating it),
// signed by signer, and returns once a checkpoint covers them all.
func writeLog(t *testing.T, dir string, signer note.Signer, entries [][]byte) {
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
	var last uint64
	var futures []tessera.IndexFuture
	for _, e := range entries {
		futures = append(futures, app.Add(ctx, tessera.NewEntry(e)))
	}
	for _, f := range futures {
		idx, err := f()
		if err != nil {
			t.Fatal(err)
		}
		last = idx.Index
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		raw, err := lr.ReadCheckpoint(ctx)
		if err == nil {
			if n := checkpointSize(raw); n > last || len(entries) == 0 && n == 0 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no checkpoint covers the entries")
		}
		time.Sleep(10 * time.Millisecond) // polling Tessera's checkpoint
	}
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}
}

// checkpointSize is the tree size a checkpoint states (unverified).
func checkpointSize(raw []byte) uint64 {
	lines := strings.SplitN(string(raw), "\n", 3)
	if len(lines) < 3 {
		return 0
	}
	n, _ := strconv.ParseUint(lines[1], 10, 64)
	return n
}

// auditorLog serves a log directory as the auditor's logHandler does
// (services/auditor/auditor.go): /log/checkpoint and /log/tile/... only.
func auditorLog(dir string) http.Handler {
	files := http.StripPrefix("/log/", http.FileServer(http.Dir(dir)))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(r.URL.Path, "/log/")
		switch {
		case p == "checkpoint":
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-cache")
		case strings.HasPrefix(p, "tile/") && !strings.HasSuffix(p, "/") && !strings.Contains(p, ".."):
			w.Header().Set("Content-Type", "application/octet-stream")
		default:
			http.NotFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}

// swappable serves whichever handler it was given last: a log changed
// under the console.
type swappable struct{ h atomic.Pointer[http.Handler] }

func (s *swappable) set(h http.Handler)                               { s.h.Store(&h) }
func (s *swappable) ServeHTTP(w http.ResponseWriter, r *http.Request) { (*s.h.Load()).ServeHTTP(w, r) }

func copyTree(t *testing.T, src, dst string) {
	t.Helper()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
}

// TestAuditOverHTTP: the console reads the auditor's log over HTTP,
// verifies it incrementally (the second round reads only what was added),
// proves an event from it, and reports on the audit page each log that
// cannot be read or does not verify: an entry changed and re-signed, the
// genuine files under a forked checkpoint, a truncated log, a checkpoint
// from another key, an entry bundle changed under the genuine checkpoint,
// huge responses and a server that does not answer. A log rewritten under
// the console raises the alarm, which stays.
func TestAuditOverHTTP(t *testing.T) {
	dir := t.TempDir()
	signer, vkey := auditKeys(t, filepath.Join(dir, "keys"))
	entries := eventEntries(t, "a", 1, 400)
	genuine := filepath.Join(dir, "genuine")
	writeLog(t, genuine, signer, entries[:300])
	grown := filepath.Join(dir, "grown")
	copyTree(t, genuine, grown)
	writeLog(t, grown, signer, entries[300:])

	// The tampered logs.
	changed := append([][]byte{}, entries...)
	changed[100] = eventEntries(t, "forged", 101, 101)[0]
	rewritten := filepath.Join(dir, "rewritten")
	writeLog(t, rewritten, signer, changed)
	forkedCheckpoint := filepath.Join(dir, "forked-checkpoint")
	copyTree(t, grown, forkedCheckpoint)
	cp, err := os.ReadFile(filepath.Join(rewritten, "checkpoint"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(forkedCheckpoint, "checkpoint"), cp, 0o644); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(dir, "truncated")
	writeLog(t, truncated, signer, entries[:200])
	evil, _ := auditKeys(t, filepath.Join(dir, "evil"))
	otherKey := filepath.Join(dir, "other-key")
	writeLog(t, otherKey, evil, entries)
	bundleChanged := filepath.Join(dir, "bundle-changed")
	copyTree(t, grown, bundleChanged)
	bundle := filepath.Join(bundleChanged, "tile", "entries", "001.p", "144")
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), `"a-350"`)
	if i < 0 {
		t.Fatal("entry 349 not found in bundle 1")
	}
	b[i+1] = 'b'
	if err := os.WriteFile(bundle, b, 0o644); err != nil {
		t.Fatal(err)
	}
	huge := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := make([]byte, 32<<10)
		for range 1024 { // 32 MiB unless the client stops reading
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	})
	silent := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, tc := range []struct {
		name    string
		h       http.Handler
		want    string
		alarm   bool
		timeout time.Duration
	}{
		{"grows", auditorLog(grown), "", false, 0},
		{"entry changed, re-signed", auditorLog(rewritten), "differs from the one verified before", true, 0},
		{"genuine files, forked checkpoint", auditorLog(forkedCheckpoint), "not the verified log of size 300 extended", true, 0},
		{"truncated", auditorLog(truncated), "truncated or rolled back", true, 0},
		{"checkpoint from another key", auditorLog(otherKey), "checkpoint", false, 0},
		{"bundle changed under the genuine checkpoint", auditorLog(bundleChanged), "audit log verification failed", false, 0},
		{"huge responses", huge, "larger than", false, 0},
		{"no answer", silent, "no complete response within 2s", false, 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var log swappable
			log.set(auditorLog(genuine))
			srv := httptest.NewServer(&log)
			defer srv.Close()
			s, web := testServer(t, Config{AuditURL: srv.URL + "/log/", AuditKeyFile: vkey, AuditTimeout: tc.timeout}, NewIndex())
			s.audit.verifyOnce(ctx)
			page := get(ctx, t, web.URL+"/audit")
			if !strings.Contains(page, "verified to entry 300 at") || strings.Contains(page, "audit-error") {
				t.Fatalf("the genuine log:\n%s", page)
			}
			log.set(tc.h)
			for round := range 2 {
				s.audit.verifyOnce(ctx)
				page = get(ctx, t, web.URL+"/audit")
				_, ver := s.audit.state()
				if tc.want == "" {
					// The second round has nothing new to read.
					if ver.Err != "" || ver.Size != 400 || ver.From != uint64(300+100*round) || !strings.Contains(page, "verified to entry 400 at") {
						t.Fatalf("round %d: %+v\n%s", round, ver, page)
					}
					continue
				}
				if ver.Size != 300 || !strings.Contains(ver.Err, tc.want) || !strings.Contains(page, `id="audit-error"`) ||
					!strings.Contains(page, htmlEscape(tc.want)) || !strings.Contains(page, "verified to entry 300 at") {
					t.Fatalf("round %d: %+v\n%s", round, ver, page)
				}
				if alarm := strings.Contains(page, `id="audit-alarm"`); alarm != tc.alarm || (ver.Alarm != "") != tc.alarm {
					t.Fatalf("round %d: alarm %v (%q), want %v", round, alarm, ver.Alarm, tc.alarm)
				}
			}
			if tc.want == "" {
				p := s.audit.prove(ctx, 350, "a-350")
				if !p.Verified || p.Index != 349 || p.Size != 400 {
					t.Fatalf("proof of sequence 350: %+v", p)
				}
				if p := s.audit.prove(ctx, 350, "a-351"); p.Verified {
					t.Fatalf("the proof of sequence 350 passed for another event: %+v", p)
				}
				return
			}
			// The genuine log again: verification resumes from entry
			// 300, and an alarm stays.
			log.set(auditorLog(grown))
			s.audit.verifyOnce(ctx)
			if _, ver := s.audit.state(); ver.Err != "" || ver.Size != 400 || ver.From != 300 || (ver.Alarm != "") != tc.alarm {
				t.Fatalf("the genuine log grown: %+v", ver)
			}
		})
	}
}

func htmlEscape(s string) string {
	return strings.NewReplacer(`"`, "&#34;", "'", "&#39;", "&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// TestAuditConfig: a log directory and a URL are one or the other, and
// either needs the key.
func TestAuditConfig(t *testing.T) {
	for _, tc := range []struct{ dir, url, key string }{
		{"/log", "http://auditor:8083/log/", "k.pub"},
		{"", "http://auditor:8083/log/", ""},
		{"/log", "", ""},
		{"", "", "k.pub"},
		{"", "file:///log/", "k.pub"},
	} {
		if _, err := newAuditView(tc.dir, tc.url, tc.key, 0); err == nil {
			t.Errorf("newAuditView(%q, %q, %q) accepted", tc.dir, tc.url, tc.key)
		}
	}
	if _, err := newAuditView("", "http://auditor:8083/log/", "k.pub", 0); err != nil {
		t.Fatal(err)
	}
}
