package keyguard

import (
	"go.opentelemetry.io/otel/metric"
)

type kgMetrics struct {
	transitions       metric.Int64Counter
	revocationLatency metric.Float64Histogram
	backendCalls      metric.Float64Histogram
	nonces            metric.Int64Counter
	nonceRefusals     metric.Int64Counter
	releases          metric.Int64Counter
	releaseSeconds    metric.Float64Histogram
	enrollments       metric.Int64Counter
	enrollSeconds     metric.Float64Histogram
	revocationsPushed metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) *kgMetrics {
	m := mp.Meter("github.com/vigil-cc/vigil/services/keyguard")
	var k kgMetrics
	k.transitions, _ = m.Int64Counter("vigil_keyguard_grant_transitions",
		metric.WithDescription("Grant state changes by key action and backend"))
	k.revocationLatency, _ = m.Float64Histogram("vigil_keyguard_revocation_latency_seconds",
		metric.WithDescription("From the causing event's time to the revocation being in force"),
		metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
	k.backendCalls, _ = m.Float64Histogram("vigil_keyguard_backend_apply_seconds",
		metric.WithDescription("Duration of revoke/restore calls to remote backends"), metric.WithUnit("s"))
	k.nonces, _ = m.Int64Counter("vigil_keyguard_nonces_issued", metric.WithDescription("Release nonces issued"))
	k.nonceRefusals, _ = m.Int64Counter("vigil_keyguard_nonces_refused",
		metric.WithDescription("Nonce requests refused, by refusal code"))
	k.releases, _ = m.Int64Counter("vigil_keyguard_releases",
		metric.WithDescription("Release requests by outcome (released or the refusal code)"))
	k.releaseSeconds, _ = m.Float64Histogram("vigil_keyguard_release_seconds",
		metric.WithDescription("Time to answer a release request"), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
	k.enrollments, _ = m.Int64Counter("vigil_keyguard_enrollment_requests",
		metric.WithDescription("Enrollment API requests by operation (nonce, enroll) and outcome (ok or the refusal code)"))
	k.enrollSeconds, _ = m.Float64Histogram("vigil_keyguard_enrollment_seconds",
		metric.WithDescription("Time to answer an enrollment API request"), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))
	k.revocationsPushed, _ = m.Int64Counter("vigil_keyguard_revocation_pushes",
		metric.WithDescription("Account updates pushed with the agents' revocation list"))
	return &k
}
