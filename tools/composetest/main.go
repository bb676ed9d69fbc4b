package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// stringList is a repeatable flag.
type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	var o options
	var files stringList
	flag.Var(&files, "f", "compose file (repeatable; default deploy/compose/compose.yaml)")
	flag.StringVar(&o.root, "root", ".", "repository root")
	flag.DurationVar(&o.timeout, "timeout", 20*time.Minute, "give up after this long")
	flag.Var(&o.breakEnv, "break", "SERVICE:VAR=VALUE sets an environment variable of a service in the override, to see the test fail (repeatable)")
	flag.BoolVar(&o.keep, "keep", false, "leave the project running at the end (for debugging)")
	flag.BoolVar(&o.cluster, "cluster", false, "the files run a 3-node NATS cluster (nats, nats-2, nats-3): while the pipeline runs, stop nats-2, then cut nats-3 off its network, and check nothing acknowledged is lost")
	flag.Parse()
	o.files = files
	if len(o.files) == 0 {
		o.files = []string{"deploy/compose/compose.yaml"}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	start := time.Now()
	line, err := run(ctx, o, func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "composetest: "+format+"\n", args...)
	})
	if err != nil {
		fmt.Printf("compose-test: FAIL after %s: %v\n", time.Since(start).Round(time.Second), err)
		os.Exit(1)
	}
	fmt.Printf("compose-test: ok in %s: %s\n", time.Since(start).Round(time.Second), line)
}

// options configure one run.
type options struct {
	files    []string
	root     string
	timeout  time.Duration
	breakEnv stringList
	keep     bool
	cluster  bool
}

// runID names this run's project and images.
func runID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
