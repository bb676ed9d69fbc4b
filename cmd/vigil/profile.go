package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
)

// Profile files `vigil dev --profile DIR` writes.
const (
	profileCPU   = "cpu.pprof"
	profileBlock = "block.pprof"
	profileMutex = "mutex.pprof"
	profileHeap  = "heap.pprof"
)

// Sampling of the blocking and mutex profiles while --profile is on: one
// blocking event per blockRate nanoseconds blocked, one mutex contention
// event in mutexFraction.
const (
	blockRate     = 100_000
	mutexFraction = 100
)

// startProfiles starts the CPU profile into dir and turns on the blocking
// and mutex profiles; the returned stop writes those and the heap profile
// beside it and turns the sampling off again. Read them with
// `go tool pprof -http : DIR/cpu.pprof`.
func startProfiles(dir string) (stop func() error, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	cpu, err := os.Create(filepath.Join(dir, profileCPU))
	if err != nil {
		return nil, fmt.Errorf("--profile: %w", err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		_ = cpu.Close()
		return nil, fmt.Errorf("--profile: %w", err)
	}
	runtime.SetBlockProfileRate(blockRate)
	prevMutex := runtime.SetMutexProfileFraction(mutexFraction)
	return func() error {
		pprof.StopCPUProfile()
		errs := []error{cpu.Close()}
		for _, p := range []struct{ name, file string }{{"block", profileBlock}, {"mutex", profileMutex}, {"heap", profileHeap}} {
			errs = append(errs, writeProfile(p.name, filepath.Join(dir, p.file)))
		}
		runtime.SetBlockProfileRate(0)
		runtime.SetMutexProfileFraction(prevMutex)
		return errors.Join(errs...)
	}, nil
}

// writeProfile writes the named runtime profile to path.
func writeProfile(name, path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		_ = f.Close()
		return fmt.Errorf("write the %s profile: %w", name, err)
	}
	return f.Close()
}
