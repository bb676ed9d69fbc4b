package auditor

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/tessera"
	"github.com/transparency-dev/tessera/api/layout"
	"github.com/transparency-dev/tessera/storage/posix"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
)

func TestRemoveUncommitted(t *testing.T) {
	l := newTestLog(t, t.TempDir())
	logDir := l.dir
	signer, err := auditlog.LoadSigner(l.signer)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	driver, err := posix.New(ctx, posix.Config{Path: logDir})
	if err != nil {
		t.Fatal(err)
	}
	app, shutdown, _, err := tessera.NewAppender(ctx, driver, tessera.NewAppendOptions().WithCheckpointSigner(signer).
		WithCheckpointInterval(100*time.Millisecond).WithBatching(512, time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	const size = 300
	var fs []tessera.IndexFuture
	for i := 1; i <= size; i++ {
		fs = append(fs, app.Add(ctx, tessera.NewEntry(auditlog.EncodeGap(events.StreamEvents, uint64(i), uint64(i), "test"))))
	}
	for _, f := range fs {
		if _, err := f(); err != nil {
			t.Fatal(err)
		}
	}
	if err := shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	// What a write cut short after writing its files would leave behind.
	stale := []string{
		layout.EntriesPath(1, 200), layout.EntriesPath(1, 0), layout.EntriesPath(2, 0), layout.EntriesPath(3, 7),
		layout.TilePath(0, 1, 100), layout.TilePath(0, 1, 0), layout.TilePath(0, 2, 0), layout.TilePath(1, 0, 2),
	}
	for _, p := range stale {
		full := filepath.Join(logDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, make([]byte, 64), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.verify(t); err == nil {
		t.Fatal("stale files should fail verification before the cleanup")
	}
	n, err := removeUncommitted(logDir, size)
	if err != nil {
		t.Fatal(err)
	}
	if n < len(stale)-1 { // tile/entries/003.p is removed as one directory
		t.Fatalf("removed %d, want at least %d", n, len(stale)-1)
	}
	for _, p := range stale {
		if _, err := os.Stat(filepath.Join(logDir, p)); err == nil {
			t.Errorf("%s still there", p)
		}
	}
	for _, p := range []string{layout.EntriesPath(0, 0), layout.EntriesPath(1, 44), layout.TilePath(0, 0, 0), layout.TilePath(0, 1, 44), layout.TilePath(1, 0, 1), "checkpoint"} {
		if _, err := os.Stat(filepath.Join(logDir, p)); err != nil {
			t.Errorf("committed file %s: %v", p, err)
		}
	}
	if _, err := l.verify(t); err != nil {
		t.Fatalf("after cleanup: %v", err)
	}
}
