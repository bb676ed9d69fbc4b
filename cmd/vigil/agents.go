package main

import (
	"context"
	"log/slog"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/services/agent"
)

// enrollingAgents is a simulated fleet's Connect (fleet.Config.Connect):
// each VM's agent makes its nkey, enrolls at keyguard's enrollment API
// (enrollURL gives its URL) with its VM's evidence, retrying until ARM
// has reported the VM, and connects like base with the credentials it
// earned, which it renews until ctx ends: the real agent's path
// (agent.Enrollment).
func enrollingAgents(base bus.Config, enrollURL func() string, log *slog.Logger) func(context.Context, string, agent.Source) (*bus.Conn, error) {
	return func(ctx context.Context, vm string, src agent.Source) (*bus.Conn, error) {
		alog := log.With("component", "agents", "vm", vm)
		en, err := agent.NewEnrollment(agent.EnrollmentConfig{URL: enrollURL(), VMKey: vm, Source: src, Logger: alog})
		if err != nil {
			return nil, err
		}
		if err := en.EnrollRetrying(ctx); err != nil {
			return nil, err
		}
		cfg := base
		cfg.Name, cfg.Logger = "agent "+vm, alog
		cfg.CredsFile, cfg.UserJWT, cfg.NKeySeed, cfg.JWTSource, cfg.InboxPrefix = "", "", "", nil, ""
		if err := en.Configure(&cfg); err != nil {
			return nil, err
		}
		conn, err := bus.Connect(ctx, cfg)
		if err != nil {
			return nil, err
		}
		go en.Renew(ctx, conn)
		return conn, nil
	}
}
