package main

import "fmt"

// fileLimitBase is what a `vigil dev` or `vigil sim run` process needs
// open besides its simulated agents' connections: listeners, the stores'
// files, the services' connections, HTTP clients.
const fileLimitBase = 4096

// fileLimitError says that the process cannot open as many files as its
// simulated agents' connections need.
type fileLimitError struct {
	need, limit uint64
	why         string // what needs them
	err         error  // why the limit could not be raised
}

func (e *fileLimitError) Error() string {
	return fmt.Sprintf("%s: about %d open files are needed, the limit is %d and could not be raised (%v); raise it (ulimit -n), use fewer --vms, or run the fleet in its own process (vigil sim run)",
		e.why, e.need, e.limit, e.err)
}
