package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// compose runs docker compose (the plugin, or docker-compose) on one
// project with the files given.
type compose struct {
	cmd     []string // "docker compose" or "docker-compose"
	project string
	files   []string
	env     []string // added to the environment
}

// findCompose picks the compose command the machine has.
func findCompose(ctx context.Context) ([]string, error) {
	if err := exec.CommandContext(ctx, "docker", "compose", "version").Run(); err == nil {
		return []string{"docker", "compose"}, nil
	}
	if _, err := exec.LookPath("docker-compose"); err == nil {
		return []string{"docker-compose"}, nil
	}
	return nil, fmt.Errorf("neither docker compose nor docker-compose is installed")
}

func (c *compose) args(args ...string) []string {
	out := append([]string{}, c.cmd[1:]...)
	out = append(out, "-p", c.project)
	for _, f := range c.files {
		out = append(out, "-f", f)
	}
	return append(out, args...)
}

// run runs a compose command; its output goes into the error on failure.
func (c *compose) run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.cmd[0], c.args(args...)...)
	cmd.Env = append(os.Environ(), c.env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w\n%s", c.cmd[0], strings.Join(args, " "), err, tail(out.String(), 40))
	}
	return out.String(), nil
}

// docker runs a docker command and returns its standard output.
func docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "docker", args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, tail(errb.String(), 20))
	}
	return out.String(), nil
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// container is one container of the project, as docker inspect sees it.
type container struct {
	ID, Service, Status string
	ExitCode            int
	Health              string
	Restarts            int // times its restart policy restarted it
}

// containers lists the project's containers (running or not).
func (c *compose) containers(ctx context.Context) ([]container, error) {
	ids, err := docker(ctx, "ps", "-aq", "--filter", "label=com.docker.compose.project="+c.project)
	if err != nil {
		return nil, err
	}
	var out []container
	for _, id := range strings.Fields(ids) {
		s, err := docker(ctx, "inspect", "-f",
			`{{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{.State.ExitCode}} {{if .State.Health}}{{.State.Health.Status}}{{else}}-{{end}} {{.RestartCount}}`, id)
		if err != nil {
			continue // removed meanwhile
		}
		var ct container
		ct.ID = id
		if _, err := fmt.Sscan(s, &ct.Service, &ct.Status, &ct.ExitCode, &ct.Health, &ct.Restarts); err != nil {
			return nil, fmt.Errorf("inspect %s: %q: %w", id, s, err)
		}
		out = append(out, ct)
	}
	return out, nil
}

// containerOf is the id of a container of service (the first, when it
// has replicas).
func (c *compose) containerOf(ctx context.Context, service string) (string, error) {
	cs, err := c.containers(ctx)
	if err != nil {
		return "", err
	}
	for _, ct := range cs {
		if ct.Service == service {
			return ct.ID, nil
		}
	}
	return "", fmt.Errorf("no %s container", service)
}

// logs is the tail of a container's output.
func logs(ctx context.Context, id string, n int) string {
	cmd := exec.CommandContext(ctx, "docker", "logs", "--tail", fmt.Sprint(n), id)
	out, _ := cmd.CombinedOutput()
	return string(out)
}
