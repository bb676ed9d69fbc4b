package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/types"
)

// nonroot is the user of the real images (distroless :nonroot).
const nonroot = "65532:65532"

// image is a test image standing in for one Dockerfile's (or NATS's).
type image struct {
	tag        string
	binary     string   // host path of the static binary
	entrypoint []string // as the real image's
	user       string   // "" is root
	mounts     []string // writable volume mount points, owned by user
	extra      map[string]string
}

// buildImages builds the static binaries of the project's programs and a
// test image for each Dockerfile and for NATS, and returns each service's
// test image (override writes the file that swaps them in).
func buildImages(ctx context.Context, p *types.Project, root, work, run string, logf func(string, ...any)) (images map[string]string, err error) {
	bin := filepath.Join(work, "bin")
	built := map[string]*image{} // by Dockerfile path, or "nats"
	byService := map[string]string{}
	var mains []string
	for _, name := range serviceNames(p) {
		svc := p.Services[name]
		switch {
		case svc.Build != nil:
			df := svc.Build.Dockerfile
			if !filepath.IsAbs(df) {
				df = filepath.Join(svc.Build.Context, df)
			}
			im, ok := built[df]
			if !ok {
				ep, user, err := readDockerfile(df)
				if err != nil {
					return nil, err
				}
				main := svc.Labels[labelMain]
				if main == "" {
					return nil, fmt.Errorf("%s: no %s label", name, labelMain)
				}
				if filepath.Base(main) != filepath.Base(ep[0]) {
					return nil, fmt.Errorf("%s: its Dockerfile runs %s, its %s label names %s", name, ep[0], labelMain, main)
				}
				mains = append(mains, main)
				im = &image{tag: fmt.Sprintf("vigil-compose-test/%s:%s", strings.TrimSuffix(filepath.Base(df), ".Dockerfile"), run),
					binary: filepath.Join(bin, filepath.Base(ep[0])), entrypoint: ep, user: user}
				built[df] = im
			}
			for _, v := range svc.Volumes {
				if v.Type == types.VolumeTypeVolume && !v.ReadOnly && !slices.Contains(im.mounts, v.Target) {
					im.mounts = append(im.mounts, v.Target)
				}
			}
			byService[name] = df
		case strings.HasPrefix(svc.Image, "nats:"):
			if _, ok := built["nats"]; !ok {
				im, err := natsImage(ctx, root, bin, svc.Image, run)
				if err != nil {
					return nil, err
				}
				built["nats"] = im
				mains = append(mains, natsModule)
			}
			byService[name] = "nats"
		}
	}
	// One go build for every program: they share most of their packages.
	if err := goBuild(ctx, root, bin+string(filepath.Separator), mains...); err != nil {
		return nil, err
	}
	for key, im := range built {
		logf("building test image %s", im.tag)
		if err := dockerBuild(ctx, filepath.Join(work, "ctx-"+filepath.Base(key)), im); err != nil {
			return nil, err
		}
	}
	images = map[string]string{}
	for name, key := range byService {
		images[name] = built[key].tag
	}
	return images, nil
}

// override is the override file: for each service its test image, and
// with -break the environment variables set to see the test fail.
func override(images map[string]string, breaks []string) string {
	env := map[string][]string{}
	for _, br := range breaks {
		svc, kv, ok := strings.Cut(br, ":")
		k, v, ok2 := strings.Cut(kv, "=")
		if ok && ok2 {
			env[svc] = append(env[svc], fmt.Sprintf("      %s: %q\n", k, v))
		}
	}
	var b strings.Builder
	b.WriteString("# Written by tools/composetest: swaps each service's image for a local test image.\nservices:\n")
	for _, name := range slices.Sorted(maps.Keys(images)) {
		fmt.Fprintf(&b, "  %s:\n    image: %s\n", name, images[name])
		if len(env[name]) > 0 {
			b.WriteString("    environment:\n")
			for _, e := range env[name] {
				b.WriteString(e)
			}
		}
	}
	return b.String()
}

var entrypointRE = regexp.MustCompile(`^ENTRYPOINT\s+(\[.*\])\s*$`)

// readDockerfile reads the entry point and user of a Dockerfile's last
// stage.
func readDockerfile(path string) (entrypoint []string, user string, err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "FROM "):
			entrypoint, user = nil, ""
		case strings.HasPrefix(line, "USER "):
			user = strings.TrimSpace(strings.TrimPrefix(line, "USER "))
		case entrypointRE.MatchString(line):
			if err := json.Unmarshal([]byte(entrypointRE.FindStringSubmatch(line)[1]), &entrypoint); err != nil {
				return nil, "", fmt.Errorf("%s: ENTRYPOINT: %w", path, err)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, "", err
	}
	if len(entrypoint) == 0 {
		return nil, "", fmt.Errorf("%s: no ENTRYPOINT in the last stage", path)
	}
	if user == "nonroot:nonroot" || user == "nonroot" {
		user = nonroot
	}
	return entrypoint, user, nil
}

// goBuild builds static binaries of the packages pkgs (relative to root)
// into out (a directory when it ends in a separator).
func goBuild(ctx context.Context, root, out string, pkgs ...string) error {
	cmd := exec.CommandContext(ctx, "go", append([]string{"build", "-trimpath", "-o", out}, pkgs...)...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", strings.Join(pkgs, " "), err, b)
	}
	return nil
}

// natsModule is nats-server's main package, built from the version the
// workspace requires.
const natsModule = "github.com/nats-io/nats-server/v2"

// natsImage builds nats-server from the Go module the code is tested
// with, after checking that the compose file pins that version, with
// busybox as wget for the health check (as in the alpine image).
func natsImage(ctx context.Context, root, bin, ref, run string) (*image, error) {
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Version}}", natsModule)
	cmd.Dir = filepath.Join(root, "pkg")
	v, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("nats-server version: %w", err)
	}
	version := strings.TrimPrefix(strings.TrimSpace(string(v)), "v")
	if want := "nats:" + version + "-alpine"; ref != want {
		return nil, fmt.Errorf("the compose file runs %s, but the code is tested with nats-server %s: pin %s", ref, version, want)
	}
	out := filepath.Join(bin, "nats-server")
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("the NATS test image needs a static busybox for its health check (apt-get install busybox-static): %w", err)
	}
	return &image{tag: "vigil-compose-test/nats:" + run, binary: out, entrypoint: []string{"/usr/local/bin/nats-server"},
		extra: map[string]string{busybox: "/usr/bin/wget"}}, nil
}

// dockerBuild builds im with the classic builder (no registry, no
// BuildKit frontend to pull) from a context made in dir.
func dockerBuild(ctx context.Context, dir string, im *image) error {
	if err := os.MkdirAll(filepath.Join(dir, "state"), 0o755); err != nil {
		return err
	}
	copyIn := func(src, name string) error {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		return os.WriteFile(filepath.Join(dir, name), b, 0o755)
	}
	var df strings.Builder
	df.WriteString("FROM scratch\n")
	if len(im.mounts) > 0 {
		for _, m := range im.mounts {
			if err := os.MkdirAll(filepath.Join(dir, "state", m), 0o755); err != nil {
				return err
			}
		}
		fmt.Fprintf(&df, "COPY --chown=%s state/ /\n", im.user)
	}
	if err := copyIn(im.binary, "program"); err != nil {
		return err
	}
	fmt.Fprintf(&df, "COPY program %s\n", im.entrypoint[0])
	i := 0
	for src, dst := range im.extra {
		name := fmt.Sprintf("extra%d", i)
		i++
		if err := copyIn(src, name); err != nil {
			return err
		}
		fmt.Fprintf(&df, "COPY %s %s\n", name, dst)
	}
	if im.user != "" {
		fmt.Fprintf(&df, "USER %s\n", im.user)
	}
	ep, _ := json.Marshal(im.entrypoint)
	fmt.Fprintf(&df, "ENTRYPOINT %s\nLABEL io.vigil.compose-test=true\n", ep)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df.String()), 0o644); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, "docker", "build", "-q", "-t", im.tag, dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("docker build %s: %w\n%s", im.tag, err, b)
	}
	return nil
}
