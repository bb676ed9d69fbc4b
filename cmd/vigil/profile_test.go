package main

import (
	"os"
	"path/filepath"
	"testing"
)

// TestProfilesWritten: --profile's four profiles are written, each a
// gzipped pprof protobuf.
func TestProfilesWritten(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "prof")
	stop, err := startProfiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{profileCPU, profileBlock, profileMutex, profileHeap} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
			t.Errorf("%s: %d bytes, not a gzipped profile", f, len(b))
		}
	}
}
