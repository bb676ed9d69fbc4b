package keyguard

import "context"

// Hooks are the points where tests act inside a running keyguard.
type Hooks struct {
	// Sealed is called after a release's secret is sealed and before its
	// final checks.
	Sealed func(vm string)
}

// RunWithHooks is Run with test hooks.
func RunWithHooks(ctx context.Context, cfg Config, h Hooks) error {
	return run(ctx, cfg, hooks{sealed: h.Sealed})
}
