package attestworker

import (
	"context"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// workerMetrics are the attest-worker's instruments (exposed on /metrics
// with dots as underscores, e.g. vigil_attest_schedule_lag_seconds).
type workerMetrics struct {
	attempts    metric.Int64Counter
	verdicts    metric.Int64Counter
	transitions metric.Int64Counter
	alerts      metric.Int64Counter
	missed      metric.Int64Counter
	overdue     metric.Int64Gauge
	lag         metric.Float64Histogram
	challenge   metric.Float64Histogram
	verify      metric.Float64Histogram
	inflight    metric.Int64UpDownCounter
	vmidWaits   metric.Int64Counter

	attrs attrCache
}

func newWorkerMetrics(mp metric.MeterProvider) *workerMetrics {
	m := mp.Meter("github.com/vigil-cc/vigil/services/attest-worker")
	w := &workerMetrics{}
	// Instrument creation fails only for invalid names; these are constant.
	w.attempts, _ = m.Int64Counter("vigil.attest.attempts", metric.WithDescription("Challenges by outcome (verdict, agent.unreachable, agent.timeout, agent.refused, verifier.error)"))
	w.verdicts, _ = m.Int64Counter("vigil.attest.verdicts", metric.WithDescription("Verdicts by EAR status"))
	w.transitions, _ = m.Int64Counter("vigil.attest.transitions", metric.WithDescription("Status changes by new status"))
	w.alerts, _ = m.Int64Counter("vigil.attest.alerts", metric.WithDescription("Alerts raised by code"))
	w.missed, _ = m.Int64Counter("vigil.attest.deadlines_missed", metric.WithDescription("Attestations found later than their due time plus the allowed lateness (at: job, sweep)"))
	w.overdue, _ = m.Int64Gauge("vigil.attest.overdue_vms", metric.WithDescription("VMs overdue at the last sweep"))
	w.lag, _ = m.Float64Histogram("vigil.attest.schedule_lag", metric.WithUnit("s"), metric.WithDescription("Time from an attestation's due time to its start"),
		metric.WithExplicitBucketBoundaries(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600))
	w.challenge, _ = m.Float64Histogram("vigil.attest.challenge_duration", metric.WithUnit("s"), metric.WithDescription("Challenge round trip to the agent"),
		metric.WithExplicitBucketBoundaries(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	w.verify, _ = m.Float64Histogram("vigil.attest.verify_duration", metric.WithUnit("s"), metric.WithDescription("Evidence verification and policy appraisal"),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
	w.vmidWaits, _ = m.Int64Counter("vigil.attest.vmid_waits", metric.WithDescription("First attestations waiting for the VM's vmId (event: deferred; arrived; expired, an attempt without it after the onboarding limit)"))
	w.inflight, _ = m.Int64UpDownCounter("vigil.attest.inflight", metric.WithDescription("Challenges in flight on this worker"))
	return w
}

func (m *workerMetrics) transition(ctx context.Context, o outcome) {
	if o.Changed && o.From != o.Status.Status {
		m.transitions.Add(ctx, 1, m.attrs.get("to", string(o.Status.Status)))
	}
}

// attrCache keeps the measurement option of each attribute key and value
// recorded, so that recording does not build, sort and hash an attribute
// set every time. Values come from small sets (outcomes, statuses, reasons,
// codes); past maxCachedAttrs the options are built per call.
type attrCache struct {
	m sync.Map
	n atomic.Int32
}

const maxCachedAttrs = 512

type attrKey struct{ key, value string }

func (c *attrCache) get(key, value string) metric.MeasurementOption {
	k := attrKey{key, value}
	if o, ok := c.m.Load(k); ok {
		return o.(metric.MeasurementOption)
	}
	o := metric.WithAttributeSet(attribute.NewSet(attribute.String(key, value)))
	if c.n.Load() < maxCachedAttrs {
		if _, loaded := c.m.LoadOrStore(k, o); !loaded {
			c.n.Add(1)
		}
	}
	return o
}
