package telemetry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Check reports whether one thing a process depends on is in order; a
// non-nil error says what is wrong.
type Check func(ctx context.Context) error

// DefaultCheckTimeout bounds one check when Health.Timeout is zero.
const DefaultCheckTimeout = 2 * time.Second

// Health holds a process's liveness and readiness checks. Liveness
// (/healthz) says whether the process should be restarted; readiness
// (/readyz) whether it can do its work now (connected to NATS, JetStream
// reachable, ...). The zero value is not usable; use NewHealth.
type Health struct {
	// Timeout bounds each check; DefaultCheckTimeout when zero.
	Timeout time.Duration

	mu    sync.RWMutex
	live  []namedCheck
	ready []namedCheck
}

type namedCheck struct {
	name  string
	check Check
}

// NewHealth returns a Health with no checks: live and ready.
func NewHealth() *Health { return &Health{} }

// AddLiveness adds a check to /healthz, replacing one of the same name.
// Keep liveness checks to faults a restart cures (a wedged loop), not to
// dependencies.
func (h *Health) AddLiveness(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.live = setCheck(h.live, name, c)
}

// AddReadiness adds a check to /readyz, replacing one of the same name (so
// that services sharing a process's Health and its NATS connection, as in
// vigil dev, add their common checks once).
func (h *Health) AddReadiness(name string, c Check) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.ready = setCheck(h.ready, name, c)
}

func setCheck(checks []namedCheck, name string, c Check) []namedCheck {
	for i := range checks {
		if checks[i].name == name {
			checks[i].check = c
			return checks
		}
	}
	return append(checks, namedCheck{name, c})
}

// Report is the outcome of a set of checks, as /healthz and /readyz answer
// it in JSON.
type Report struct {
	Status string        `json:"status"` // "ok" or "failing"
	Checks []CheckResult `json:"checks,omitempty"`
}

// OK reports whether every check passed.
func (r Report) OK() bool { return r.Status == StatusOK }

// Err returns nil when every check passed, else an error naming the failing
// checks.
func (r Report) Err() error {
	var errs []error
	for _, c := range r.Checks {
		if !c.OK {
			errs = append(errs, fmt.Errorf("%s: %s", c.Name, c.Error))
		}
	}
	return errors.Join(errs...)
}

// Report statuses.
const (
	StatusOK      = "ok"
	StatusFailing = "failing"
)

// CheckResult is the outcome of one check.
type CheckResult struct {
	Name       string  `json:"name"`
	OK         bool    `json:"ok"`
	Error      string  `json:"error,omitempty"`
	DurationMS float64 `json:"duration_ms"`
}

// Live runs the liveness checks.
func (h *Health) Live(ctx context.Context) Report {
	h.mu.RLock()
	checks := append([]namedCheck(nil), h.live...)
	h.mu.RUnlock()
	return h.run(ctx, checks)
}

// Ready runs the readiness checks.
func (h *Health) Ready(ctx context.Context) Report {
	h.mu.RLock()
	checks := append([]namedCheck(nil), h.ready...)
	h.mu.RUnlock()
	return h.run(ctx, checks)
}

// run runs checks concurrently, each bounded by the timeout; a check that
// panics fails instead of taking the process down.
func (h *Health) run(ctx context.Context, checks []namedCheck) Report {
	timeout := h.Timeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}
	results := make([]CheckResult, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			start := time.Now()
			err := runCheck(cctx, c.check)
			res := CheckResult{Name: c.name, OK: err == nil, DurationMS: float64(time.Since(start).Microseconds()) / 1000}
			if err != nil {
				res.Error = err.Error()
			}
			results[i] = res
		})
	}
	wg.Wait()
	r := Report{Status: StatusOK, Checks: results}
	for _, c := range results {
		if !c.OK {
			r.Status = StatusFailing
		}
	}
	return r
}

// runCheck returns when c does or when ctx ends, whichever is first, so a
// check that ignores its context cannot hold up the probe.
func runCheck(ctx context.Context, c Check) error {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- c(ctx)
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer: %w", ctx.Err())
	}
}

// LivenessHandler serves /healthz: 200 when every liveness check passes,
// else 503, with the Report as JSON.
func (h *Health) LivenessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeReport(w, r, h.Live(r.Context()))
	})
}

// ReadinessHandler serves /readyz: 200 when every readiness check passes,
// else 503, with the Report as JSON.
func (h *Health) ReadinessHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeReport(w, r, h.Ready(r.Context()))
	})
}

func writeReport(w http.ResponseWriter, r *http.Request, rep Report) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if rep.OK() {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if r.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(rep)
}

// NATSConnected checks that nc is connected to a server (not reconnecting
// or closed).
func NATSConnected(nc *nats.Conn) Check {
	return func(context.Context) error {
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats connection is %s", st)
		}
		return nil
	}
}

// JetStreamReachable checks that the JetStream API answers (which needs a
// meta leader on a cluster).
func JetStreamReachable(js jetstream.JetStream) Check {
	return func(ctx context.Context) error {
		if _, err := js.AccountInfo(ctx); err != nil {
			return fmt.Errorf("jetstream: %w", err)
		}
		return nil
	}
}
