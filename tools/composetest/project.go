package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
)

// labelMain names a Vigil service's main package (as make compose-check
// reads it).
const labelMain = "io.vigil.main"

// oneShots are the services that run to completion at start.
var oneShots = []string{"auth-init", "provision", "sim-export"}

// loadProject reads the compose files as docker compose does (profiles
// not activated are left out).
func loadProject(ctx context.Context, files []string, env map[string]string) (*types.Project, error) {
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	opts, err := cli.NewProjectOptions(files,
		cli.WithName("vigil"),
		cli.WithWorkingDirectory(filepath.Dir(files[0])),
		cli.WithInterpolation(true),
		cli.WithResolvedPaths(true),
		cli.WithEnv(envList),
	)
	if err != nil {
		return nil, fmt.Errorf("compose options: %w", err)
	}
	p, err := opts.LoadProject(ctx)
	if err != nil {
		return nil, fmt.Errorf("compose file: %w", err)
	}
	return p, nil
}

// serviceNames are the project's services, sorted.
func serviceNames(p *types.Project) []string {
	var names []string
	for n := range p.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// isOneShot reports whether the service runs to completion at start.
func isOneShot(name string) bool { return slices.Contains(oneShots, name) }

// portsFree checks that every host port the project publishes can be
// bound, so that a port held by another program is named before anything
// starts.
func portsFree(p *types.Project) error {
	var busy []string
	for _, n := range serviceNames(p) {
		for _, port := range p.Services[n].Ports {
			if port.Published == "" {
				continue
			}
			addr := net.JoinHostPort(port.HostIP, port.Published)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				busy = append(busy, fmt.Sprintf("%s (%s)", addr, n))
				continue
			}
			ln.Close()
		}
	}
	if len(busy) > 0 {
		return fmt.Errorf("ports the compose file publishes are in use on this host: %s; stop what holds them", strings.Join(busy, ", "))
	}
	return nil
}
