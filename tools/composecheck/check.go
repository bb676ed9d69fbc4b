package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// Labels of a Vigil service in the Compose file: its main package and the
// arguments that make the program print its usage (default "-h"), which
// names every environment variable it reads.
const (
	LabelMain = "io.vigil.main"
	LabelHelp = "io.vigil.help"
)

// modulePrefix is the import path prefix of this repository's packages.
const modulePrefix = "github.com/vigil-cc/vigil/"

// Problem is one finding against the Compose file.
type Problem struct {
	Service string
	Msg     string
}

func (p Problem) String() string { return p.Service + ": " + p.Msg }

// otelEnv lists the OpenTelemetry environment variables read by the SDK
// packages that define them (the names are assembled at run time there, so a
// literal scan cannot find them).
var otelEnv = map[string]string{
	"OTEL_SERVICE_NAME":                     "go.opentelemetry.io/otel/sdk/resource",
	"OTEL_RESOURCE_ATTRIBUTES":              "go.opentelemetry.io/otel/sdk/resource",
	"OTEL_TRACES_SAMPLER":                   "go.opentelemetry.io/otel/sdk/trace",
	"OTEL_TRACES_SAMPLER_ARG":               "go.opentelemetry.io/otel/sdk/trace",
	"OTEL_EXPORTER_OTLP_ENDPOINT":           "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_HEADERS":            "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_INSECURE":           "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TRACES_INSECURE":    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TIMEOUT":            "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_COMPRESSION":        "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_BSP_SCHEDULE_DELAY":               "go.opentelemetry.io/otel/sdk/trace",
	"OTEL_BSP_MAX_QUEUE_SIZE":               "go.opentelemetry.io/otel/sdk/trace",
	"OTEL_BSP_MAX_EXPORT_BATCH_SIZE":        "go.opentelemetry.io/otel/sdk/trace",
	"OTEL_EXPORTER_OTLP_TRACES_HEADERS":     "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT":     "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL":    "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_PROTOCOL":           "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_CERTIFICATE":        "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
	"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp",
}

// Check loads file strictly and returns what is wrong with it. An error means
// the check itself could not run (or the file is invalid Compose).
func Check(ctx context.Context, file, root string) ([]Problem, error) {
	opts, err := cli.NewProjectOptions([]string{file},
		cli.WithName("vigil"),
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithConsistency(true),
	)
	if err != nil {
		return nil, fmt.Errorf("compose options: %w", err)
	}
	project, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("compose file %s is invalid: %w", file, err)
	}
	absRoot, err := filepath.Abs(root)
	if err != nil {
		return nil, err
	}
	var problems []Problem
	names := make([]string, 0, len(project.Services))
	for name := range project.Services {
		names = append(names, name)
	}
	sort.Strings(names)
	vigilServices := 0
	for _, name := range names {
		svc := project.Services[name]
		main, ok := svc.Labels[LabelMain]
		if !ok {
			if svc.Build != nil {
				problems = append(problems, Problem{name, fmt.Sprintf("built from this repository but has no %s label naming its main package", LabelMain)})
			}
			continue
		}
		vigilServices++
		problems = append(problems, checkService(ctx, absRoot, name, svc, main)...)
	}
	if vigilServices == 0 {
		problems = append(problems, Problem{"(file)", "no service carries the " + LabelMain + " label"})
	}
	return problems, nil
}

func checkService(ctx context.Context, root, name string, svc types.ServiceConfig, main string) []Problem {
	var problems []Problem
	if svc.Build == nil {
		problems = append(problems, Problem{name, "a Vigil service must be built from its Dockerfile"})
	} else {
		problems = append(problems, checkDockerfile(name, svc.Build)...)
	}
	help := strings.Fields(svc.Labels[LabelHelp])
	if len(help) == 0 {
		help = []string{"-h"}
	}
	reads, err := envReadBy(ctx, root, main, help)
	if err != nil {
		return append(problems, Problem{name, err.Error()})
	}
	vars := make([]string, 0, len(svc.Environment))
	for k := range svc.Environment {
		vars = append(vars, k)
	}
	sort.Strings(vars)
	for _, v := range vars {
		if !reads[v] {
			problems = append(problems, Problem{name, fmt.Sprintf("sets %s, which %s never reads", v, main)})
		}
	}
	return problems
}

var fromRE = regexp.MustCompile(`(?i)^\s*FROM\s+`)
var userRE = regexp.MustCompile(`(?i)^\s*USER\s+(\S+)`)

// checkDockerfile requires a multi-stage build whose final stage sets a
// non-root user.
func checkDockerfile(name string, b *types.BuildConfig) []Problem {
	path := b.Dockerfile
	if path == "" {
		path = "Dockerfile"
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(b.Context, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return []Problem{{name, fmt.Sprintf("Dockerfile: %v", err)}}
	}
	defer f.Close()
	froms, user := 0, ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if fromRE.MatchString(line) {
			froms++
			user = ""
		}
		if m := userRE.FindStringSubmatch(line); m != nil {
			user = m[1]
		}
	}
	var problems []Problem
	if froms < 2 {
		problems = append(problems, Problem{name, path + " is not a multi-stage build"})
	}
	if user == "" || user == "root" || user == "0" || strings.HasPrefix(user, "0:") || strings.HasPrefix(user, "root:") {
		problems = append(problems, Problem{name, path + ": the final stage does not run as a non-root USER"})
	}
	return problems
}

type goPackage struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	Module     *struct{ Path string }
}

// envReadBy returns the environment variable names the program in mainDir
// reads: every upper-case string literal in this repository's packages that
// it links, every variable its usage text names (programs that derive
// variable names from flag names document them there), and the
// OpenTelemetry variables of the SDK packages it links.
func envReadBy(ctx context.Context, root, mainDir string, helpArgs []string) (map[string]bool, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-deps", "-json", mainDir)
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("go list %s: %s", mainDir, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("go list %s: %w", mainDir, err)
	}
	reads := map[string]bool{}
	linked := map[string]bool{}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	isMain := false
	for {
		var p goPackage
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			return nil, fmt.Errorf("go list output: %w", err)
		}
		linked[p.ImportPath] = true
		if !strings.HasPrefix(p.ImportPath, modulePrefix) {
			continue
		}
		isMain = true
		for _, f := range p.GoFiles {
			if err := stringLiterals(filepath.Join(p.Dir, f), reads); err != nil {
				return nil, err
			}
		}
	}
	if !isMain {
		return nil, fmt.Errorf("%s is not a package of this repository", mainDir)
	}
	for v, pkg := range otelEnv {
		if linked[pkg] {
			reads[v] = true
		}
	}
	if err := usageEnv(ctx, root, mainDir, helpArgs, reads); err != nil {
		return nil, err
	}
	return reads, nil
}

var usageEnvRE = regexp.MustCompile(`\b(VIGIL|OTEL)_[A-Z0-9_]+\b`)

// usageEnv builds the program and adds the variables its usage text names.
func usageEnv(ctx context.Context, root, mainDir string, helpArgs []string, into map[string]bool) error {
	dir, err := os.MkdirTemp("", "composecheck")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "prog")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, mainDir)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %s", mainDir, strings.TrimSpace(string(out)))
	}
	hctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	help := exec.CommandContext(hctx, bin, helpArgs...)
	help.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	out, _ := help.CombinedOutput() // -h exits non-zero with the flag package
	if hctx.Err() != nil {
		return fmt.Errorf("%s %s did not print its usage within 20 s", mainDir, strings.Join(helpArgs, " "))
	}
	for _, v := range usageEnvRE.FindAllString(string(out), -1) {
		into[v] = true
	}
	return nil
}

var envNameRE = regexp.MustCompile(`^[A-Z][A-Z0-9]*(_[A-Z0-9]+)+$`)

func stringLiterals(path string, into map[string]bool) error {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
	if err != nil {
		return fmt.Errorf("parse %s: %w", path, err)
	}
	ast.Inspect(f, func(n ast.Node) bool {
		lit, ok := n.(*ast.BasicLit)
		if !ok || lit.Kind != token.STRING {
			return true
		}
		s, err := strconv.Unquote(lit.Value)
		if err == nil && envNameRE.MatchString(s) {
			into[s] = true
		}
		return true
	})
	return nil
}
