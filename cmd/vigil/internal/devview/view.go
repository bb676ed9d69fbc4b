package devview

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"
)

// IsTerminal reports whether w is a character device (an interactive
// terminal), where the live view redraws its status line in place.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Show writes notices as lines and the fleet's figures as a status line
// until ctx ends: on a terminal the status line is redrawn in place several
// times a second; elsewhere it is printed as a plain line every plainEvery.
func Show(ctx context.Context, w io.Writer, c *Collector, tty bool, plainEvery time.Duration) {
	start := time.Now()
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	lastPlain := time.Time{}
	last := ""
	status := func() string {
		n := c.Counts()
		return fmt.Sprintf("[%5.1fs] VMs %d  trusted %d  pending %d  untrusted %d  unreachable %d  stale %d  suspended %d  | revoked %d  alerts %d  audit %d",
			time.Since(start).Seconds(), n.Known, n.Trusted+n.Warning, n.Pending, n.Untrusted, n.Unreachable, n.Stale, n.Suspended, n.Revoked, n.Alerts, n.AuditEntries)
	}
	clear := func() {
		if tty && last != "" {
			fmt.Fprint(w, "\r\033[K")
		}
	}
	draw := func() {
		s := status()
		if tty {
			fmt.Fprint(w, "\r\033[K"+s)
			last = s
			return
		}
		if time.Since(lastPlain) >= plainEvery {
			fmt.Fprintln(w, s)
			lastPlain = time.Now()
		}
	}
	for {
		select {
		case <-ctx.Done():
			clear()
			fmt.Fprintln(w, status())
			return
		case n := <-c.Notices():
			clear()
			fmt.Fprintf(w, "%s  %s\n", n.At.Format("15:04:05.000"), n.Text)
			last = ""
			draw()
		case <-tick.C:
			draw()
		}
	}
}
