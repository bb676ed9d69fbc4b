package ingest

import (
	"context"
	"strconv"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// metrics are ingest's OpenTelemetry instruments (exported on /metrics).
type metrics struct {
	requests   metric.Int64Counter
	received   metric.Int64Counter
	normalize  metric.Int64Counter
	lifecycles metric.Int64Counter
	jobCount   metric.Int64Counter
	configs    metric.Int64Counter
	arm        metric.Int64Counter
	nsOps      metric.Int64Counter
	reconciles metric.Int64Counter
	tags       metric.Int64Counter
	listed     metric.Int64Counter
}

func newMetrics(mp metric.MeterProvider) *metrics {
	m := mp.Meter("github.com/vigil-cc/vigil/services/ingest")
	c := func(name, desc string) metric.Int64Counter {
		ctr, _ := m.Int64Counter(name, metric.WithDescription(desc))
		return ctr
	}
	return &metrics{
		requests:   c("vigil_ingest_webhook_requests", "Webhook requests by HTTP status"),
		received:   c("vigil_ingest_events_received", "Inbound Azure events by origin and outcome (stored, rejected)"),
		normalize:  c("vigil_ingest_events_normalized", "Stored raw events by origin and outcome (applied, superseded, ignored, malformed, enrich_only)"),
		lifecycles: c("vigil_ingest_lifecycle_published", "Lifecycle events published by kind and origin"),
		jobCount:   c("vigil_ingest_jobs", "Attestation jobs requested by reason, and whether a pending job absorbed them"),
		configs:    c("vigil_ingest_config_published", "Configuration findings published, by compliance"),
		arm:        c("vigil_ingest_arm_reads", "ARM enrichment reads and requests by outcome"),
		nsOps:      c("vigil_ingest_namespace_operations", "Event Grid namespace operations by kind and outcome"),
		reconciles: c("vigil_ingest_reconcile_runs", "Reconcile runs by outcome"),
		listed:     c("vigil_ingest_vmid_from_list", "VMs whose vmId the reconcile list recorded before their enrichment's read"),
		tags:       c("vigil_ingest_arm_tags_bounded", "Azure tags from ARM beyond Azure's bounds, by what was done (dropped_over_max, dropped_long_name, dropped_invalid, trimmed_value)"),
	}
}

func (m *metrics) webhook(status, accepted, rejected int) {
	ctx := context.Background()
	m.requests.Add(ctx, 1, metric.WithAttributes(attribute.String("status", strconv.Itoa(status))))
	if accepted > 0 && (status == 200 || status == 400 || status == 413) {
		m.received.Add(ctx, int64(accepted), metric.WithAttributes(attribute.String("origin", OriginEventGrid), attribute.String("outcome", "stored")))
	}
	if rejected > 0 {
		m.received.Add(ctx, int64(rejected), metric.WithAttributes(attribute.String("origin", OriginEventGrid), attribute.String("outcome", "rejected")))
	}
}

func (m *metrics) namespaceEvents(outcome string, n int) {
	m.received.Add(context.Background(), int64(n), metric.WithAttributes(attribute.String("origin", OriginNamespace), attribute.String("outcome", outcome)))
}

func (m *metrics) namespaceOp(op, outcome string) {
	m.nsOps.Add(context.Background(), 1, metric.WithAttributes(attribute.String("op", op), attribute.String("outcome", outcome)))
}

func (m *metrics) normalized(ctx context.Context, origin, outcome string) {
	m.normalize.Add(ctx, 1, metric.WithAttributes(attribute.String("origin", origin), attribute.String("outcome", outcome)))
}

func (m *metrics) lifecycle(ctx context.Context, kind, origin string) {
	m.lifecycles.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", kind), attribute.String("origin", origin)))
}

func (m *metrics) jobs(ctx context.Context, reason string, absorbed bool) {
	m.jobCount.Add(ctx, 1, metric.WithAttributes(attribute.String("reason", reason), attribute.Bool("absorbed", absorbed)))
}

func (m *metrics) config(ctx context.Context, compliant bool) {
	m.configs.Add(ctx, 1, metric.WithAttributes(attribute.Bool("compliant", compliant)))
}

func (m *metrics) armRead(outcome string) {
	m.arm.Add(context.Background(), 1, metric.WithAttributes(attribute.String("outcome", outcome)))
}

func (m *metrics) listedVMID(ctx context.Context) { m.listed.Add(ctx, 1) }

func (m *metrics) reconcile(outcome string) {
	m.reconciles.Add(context.Background(), 1, metric.WithAttributes(attribute.String("outcome", outcome)))
}

// tagsBounded counts the tags of one ARM read that were dropped or trimmed.
func (m *metrics) tagsBounded(ctx context.Context, b normalize.TagsBounded) {
	for _, c := range []struct {
		what string
		n    int
	}{
		{"dropped_over_max", b.DroppedOverMax}, {"dropped_long_name", b.DroppedLongName},
		{"dropped_invalid", b.DroppedInvalid}, {"trimmed_value", b.TrimmedValues},
	} {
		if c.n > 0 {
			m.tags.Add(ctx, int64(c.n), metric.WithAttributes(attribute.String("what", c.what)))
		}
	}
}
