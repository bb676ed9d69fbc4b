package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const root = "../.."

func writeCompose(t *testing.T, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "compose.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestCheck(t *testing.T) {
	abs := func(p string) string {
		a, err := filepath.Abs(p)
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	good, bad := abs("testdata/good"), abs("testdata/bad")
	tests := []struct {
		name    string
		compose string
		want    []string // substrings of problems; empty means none
	}{
		{"valid", `
services:
  app:
    build: {context: ` + good + `, dockerfile: app.Dockerfile}
    labels: {io.vigil.main: ./tools/composecheck/testdata/app}
    environment: {VIGIL_APP_URL: "nats://nats:4222", VIGIL_APP_MODE: fast}
  nats:
    image: nats:2.12-alpine
    environment: {ANYTHING: goes}
`, nil},
		{"unread variable", `
services:
  app:
    build: {context: ` + good + `, dockerfile: app.Dockerfile}
    labels: {io.vigil.main: ./tools/composecheck/testdata/app}
    environment: {VIGIL_APP_URL: x, VIGIL_APP_MODE: fast, VIGIL_APP_LEVL: info}
`, []string{"sets VIGIL_APP_LEVL"}},
		{"single stage", `
services:
  app:
    build: {context: ` + bad + `, dockerfile: single.Dockerfile}
    labels: {io.vigil.main: ./tools/composecheck/testdata/app}
`, []string{"not a multi-stage build", "non-root USER"}},
		{"root user", `
services:
  app:
    build: {context: ` + bad + `, dockerfile: root.Dockerfile}
    labels: {io.vigil.main: ./tools/composecheck/testdata/app}
`, []string{"non-root USER"}},
		{"unlabelled build", `
services:
  app:
    build: {context: ` + good + `, dockerfile: app.Dockerfile}
`, []string{"no io.vigil.main label", "no service carries"}},
		{"unknown main", `
services:
  app:
    build: {context: ` + good + `, dockerfile: app.Dockerfile}
    labels: {io.vigil.main: ./does/not/exist}
`, []string{"go list ./does/not/exist"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := writeCompose(t, t.TempDir(), tc.compose)
			problems, err := Check(context.Background(), file, root)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, p := range problems {
				got = append(got, p.String())
			}
			if len(tc.want) == 0 && len(got) > 0 {
				t.Fatalf("problems: %q", got)
			}
			for _, w := range tc.want {
				found := false
				for _, g := range got {
					found = found || strings.Contains(g, w)
				}
				if !found {
					t.Errorf("no problem mentions %q; got %q", w, got)
				}
			}
		})
	}
}

func TestCheckRejectsInvalidCompose(t *testing.T) {
	for name, body := range map[string]string{
		"unknown key":   "services:\n  app:\n    image: x\n    environmnt: {A: b}\n",
		"not a mapping": "services: [1, 2]\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Check(context.Background(), writeCompose(t, t.TempDir(), body), root); err == nil {
				t.Fatal("invalid compose file accepted")
			}
		})
	}
}

// TestRepositoryComposeFile is `make compose-check` as a test, so that
// `make test` keeps the shipped compose file and the code in step.
func TestRepositoryComposeFile(t *testing.T) {
	problems, err := Check(context.Background(), filepath.Join(root, "deploy", "compose", "compose.yaml"), root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
}
