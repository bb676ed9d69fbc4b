// Package keyfile reads files holding secrets (keys, credentials) and refuses those that users other than their owner may access.
package keyfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
)

// ErrPermissive is matched by errors.Is when a key file's mode lets its
// group or other users at it.
var ErrPermissive = errors.New("keyfile: key file is accessible to group or others")

// MaxSize bounds what Read reads when its caller gives no bound.
const MaxSize = 64 << 10

// Check returns an error matching ErrPermissive when path (or what a
// symlink at path points to) may be read, written or executed by its group
// or by others, naming the file, its mode and the fix.
func Check(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("keyfile: %w", err)
	}
	return checkMode(path, fi.Mode())
}

// Read checks the mode of the key file at path, as Check does, on the open
// file, and reads it: at most maxSize bytes (MaxSize when maxSize <= 0);
// a longer file or one that is not a regular file is refused.
func Read(path string, maxSize int64) ([]byte, error) {
	if maxSize <= 0 {
		maxSize = MaxSize
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("keyfile: %s is not a regular file (%s)", path, fi.Mode().Type())
	}
	if err := checkMode(path, fi.Mode()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("keyfile: read %s: %w", path, err)
	}
	if int64(len(b)) > maxSize {
		return nil, fmt.Errorf("keyfile: %s is over %d bytes, not a key file", path, maxSize)
	}
	return b, nil
}

func checkMode(path string, mode fs.FileMode) error {
	// Windows reports no permission bits worth checking (ACLs decide).
	if runtime.GOOS == "windows" {
		return nil
	}
	if perm := mode.Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; it must be accessible to its owner only: chmod 600 %s", ErrPermissive, path, perm, path)
	}
	return nil
}
