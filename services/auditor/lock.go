package auditor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// LockFileName is the file in the log directory whose flock(2) makes an
// auditor the log's only writer.
const LockFileName = ".vigil-writer.lock"

// writerLock is an exclusive flock on the log directory's lock file. The
// kernel releases it when the holder's file is closed, including when the
// process dies (kill -9), so a standby never waits on a dead writer.
type writerLock struct {
	f *os.File
}

// errLocked means another process (or open file) holds the lock.
var errLocked = errors.New("log directory is locked by another auditor")

func tryLock(dir string) (*writerLock, error) {
	path := filepath.Join(dir, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("auditor: open lock file: %w", err)
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if errors.Is(err, syscall.EWOULDBLOCK) {
		f.Close()
		return nil, errLocked
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("auditor: lock %s: %w", path, err)
	}
	// Say who holds it, for operators; the lock itself is the flock.
	host, _ := os.Hostname()
	info := "pid " + strconv.Itoa(os.Getpid()) + " host " + host + " since " + time.Now().UTC().Format(time.RFC3339) + "\n"
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(info), 0)
	}
	return &writerLock{f: f}, nil
}

// acquireLock takes the writer lock, polling every interval while another
// auditor holds it (hot standby). onWait is called once when it has to wait.
func acquireLock(ctx context.Context, dir string, interval time.Duration, onWait func(holder string)) (*writerLock, error) {
	waiting := false
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		l, err := tryLock(dir)
		if err == nil {
			return l, nil
		}
		if !errors.Is(err, errLocked) {
			return nil, err
		}
		if !waiting {
			waiting = true
			if onWait != nil {
				holder, _ := os.ReadFile(filepath.Join(dir, LockFileName))
				onWait(string(holder))
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func (l *writerLock) release() {
	if l == nil || l.f == nil {
		return
	}
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
	l.f = nil
}
