// Command composecheck validates a Compose file with the compose-spec loader
// and checks it against the code: every Vigil service is built by a
// multi-stage Dockerfile that runs as a non-root user, and every environment
// variable the file sets for a Vigil service is one that service's program
// actually reads.
//
// A Compose service is a Vigil service when it carries the label
// io.vigil.main naming its main package directory (e.g.
// ./services/ingest/cmd/vigil-ingest), relative to the repository root.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
)

func main() {
	file := flag.String("f", "deploy/compose/compose.yaml", "Compose file to check")
	root := flag.String("root", ".", "repository root (holds go.work)")
	flag.Parse()
	problems, err := Check(context.Background(), *file, *root)
	if err != nil {
		fmt.Fprintln(os.Stderr, "composecheck:", err)
		os.Exit(2)
	}
	for _, p := range problems {
		fmt.Fprintln(os.Stderr, p)
	}
	if len(problems) > 0 {
		fmt.Fprintf(os.Stderr, "composecheck: %s: %d problem(s)\n", *file, len(problems))
		os.Exit(1)
	}
	fmt.Printf("composecheck: %s is valid and every environment variable is read by its service\n", *file)
}
