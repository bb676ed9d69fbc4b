package keyguard

// OnSealed makes cfg's keyguard call f after a release's secret is sealed
// and before its final checks.
func OnSealed(cfg *Config, f func(vm string)) { cfg.sealed = f }
