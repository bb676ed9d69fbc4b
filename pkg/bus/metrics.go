package bus

import (
	"go.opentelemetry.io/otel/metric"
)

// busMetrics are the bus's own instruments.
type busMetrics struct {
	published     metric.Int64Counter
	publishErrors metric.Int64Counter
	jobsAbsorbed  metric.Int64Counter
	handled       metric.Int64Counter
	handleSeconds metric.Float64Histogram
	// repliesRefused counts requests Serve did not answer because of
	// their reply subject (WithReplyCheck), by served subject.
	repliesRefused metric.Int64Counter
}

func newBusMetrics(mp metric.MeterProvider) *busMetrics {
	m := mp.Meter("github.com/vigil-cc/vigil/pkg/bus")
	b := &busMetrics{}
	// Instrument creation only fails for invalid names; the names are constant.
	b.published, _ = m.Int64Counter("vigil.bus.published", metric.WithDescription("Events stored in JetStream"))
	b.publishErrors, _ = m.Int64Counter("vigil.bus.publish_errors", metric.WithDescription("Failed publishes"))
	b.jobsAbsorbed, _ = m.Int64Counter("vigil.bus.jobs_absorbed", metric.WithDescription("Jobs absorbed by an already pending job"))
	b.handled, _ = m.Int64Counter("vigil.bus.handled", metric.WithDescription("Consumed messages by outcome (ack, nak, term)"))
	b.repliesRefused, _ = m.Int64Counter("vigil.bus.replies_refused", metric.WithDescription("Requests not answered: reply subject outside the requester's inbox"))
	b.handleSeconds, _ = m.Float64Histogram("vigil.bus.handle_duration", metric.WithUnit("s"), metric.WithDescription("Handler duration"))
	return b
}
