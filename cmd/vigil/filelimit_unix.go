//go:build unix

package main

import "syscall"

// ensureFileLimit raises the process's open file limit to need when it is
// lower (the hard limit too when the process may, else up to the hard
// limit), and says so when it cannot.
func ensureFileLimit(need uint64, why string) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return nil // unknown: let the system say so if it comes to that
	}
	if lim.Cur >= need {
		return nil
	}
	want := lim
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
	if err == nil {
		return nil
	}
	if lim.Max > lim.Cur {
		// At least up to the hard limit, if that is enough.
		soft := lim
		soft.Cur = lim.Max
		if serr := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &soft); serr == nil && soft.Cur >= need {
			return nil
		}
	}
	return &fileLimitError{need: need, limit: max(lim.Cur, lim.Max), why: why, err: err}
}
