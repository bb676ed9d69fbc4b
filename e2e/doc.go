// Package e2e holds Vigil's multi-process end-to-end test: every service
// binary runs as its own OS process against one nats-server, driven by the
// simulated Azure and fleet of `vigil sim`.
package e2e
