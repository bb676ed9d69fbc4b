package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Header names set on every published event.
const (
	HeaderMsgID     = jetstream.MsgIDHeader // "Nats-Msg-Id"
	HeaderEventType = "Vigil-Event-Type"
	HeaderVMKey     = "Vigil-Vm-Key"
	HeaderEventTime = "Vigil-Event-Time"
)

// Msg builds the NATS message for envelope e on subject: the envelope as the
// body, its id as Nats-Msg-Id and the trace context of ctx.
func Msg(ctx context.Context, subject string, e events.Envelope) (*nats.Msg, error) {
	if err := e.Validate(); err != nil {
		return nil, fmt.Errorf("bus: publish to %s: %w", subject, err)
	}
	body, err := e.Marshal()
	if err != nil {
		return nil, fmt.Errorf("bus: encode envelope %s: %w", e.ID, err)
	}
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(HeaderMsgID, e.ID)
	m.Header.Set(HeaderEventType, e.Type)
	if vm := events.VMFromSubject(subject); vm != "" {
		m.Header.Set(HeaderVMKey, vm)
	}
	InjectTrace(ctx, m.Header)
	return m, nil
}

// Publish stores envelope e on subject in JetStream and waits for the
// server's acknowledgement. A second publish of the same envelope id within
// the stream's duplicate window is stored once (the ack reports Duplicate).
func (c *Conn) Publish(ctx context.Context, subject string, e events.Envelope) (*jetstream.PubAck, error) {
	ctx, span := c.tracer.Start(ctx, "publish "+subject, trace.WithSpanKind(trace.SpanKindProducer))
	defer span.End()
	if span.IsRecording() {
		span.SetAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", subject),
			attribute.String("messaging.message.id", e.ID),
			attribute.String("cloudevents.event_type", e.Type),
		)
	}
	m, err := Msg(ctx, subject, e)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		return nil, err
	}
	ack, err := c.JS.PublishMsg(ctx, m)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		c.metrics.publishErrors.Add(ctx, 1)
		return nil, fmt.Errorf("bus: publish %s to %s: %w", e.Type, subject, err)
	}
	c.metrics.published.Add(ctx, 1)
	if ack.Duplicate {
		span.SetAttributes(attribute.Bool("messaging.nats.duplicate", true))
	}
	return ack, nil
}

// PublishEvent wraps data in a new envelope of type typ from source and
// publishes it on subject.
func (c *Conn) PublishEvent(ctx context.Context, subject, typ, source string, data any) (events.Envelope, error) {
	e, err := events.New(typ, source, subject, data)
	if err != nil {
		return events.Envelope{}, err
	}
	if _, err := c.Publish(ctx, subject, e); err != nil {
		return e, err
	}
	return e, nil
}

// ErrJobAbsorbed is matched by errors.Is on the error of a job publish that
// the stream refused because the VM already has a pending job.
var ErrJobAbsorbed = errors.New("bus: a job for this VM is already pending")

// PublishJob enqueues an attestation job for job.VMKey. VIGIL_JOBS keeps at
// most one pending job per VM: when one is pending already, the new job is
// absorbed (absorbed is true and err is nil), since the pending job will
// attest the VM anyway.
func (c *Conn) PublishJob(ctx context.Context, source string, job events.Job) (absorbed bool, err error) {
	if !events.ValidVMKey(job.VMKey) {
		return false, fmt.Errorf("bus: job with invalid vm key %q", job.VMKey)
	}
	if job.RequestedAt.IsZero() {
		job.RequestedAt = time.Now().UTC()
	}
	_, err = c.PublishEvent(ctx, events.AttestJobSubject(job.VMKey), events.TypeJob, source, job)
	if isPerSubjectLimit(err) {
		c.metrics.jobsAbsorbed.Add(ctx, 1)
		return true, nil
	}
	return false, err
}

// isPerSubjectLimit reports whether err is the stream refusing a message
// because its subject already holds the maximum (DiscardNewPerSubject).
func isPerSubjectLimit(err error) bool {
	return err != nil && strings.Contains(err.Error(), "maximum messages per subject exceeded")
}

// PublishAlert publishes alert a from source on
// vigil.alert.<severity>.<vm> (severity warning and time now when unset).
// id is the event's id: derived from the alert's cause, so that a
// retried publish (a redelivered message handled again) is stored once;
// "" gives a fresh one.
func (c *Conn) PublishAlert(ctx context.Context, source, id string, a events.Alert) error {
	if a.Severity == "" {
		a.Severity = events.SeverityWarning
	}
	if a.At.IsZero() {
		a.At = time.Now().UTC()
	}
	if a.Source == "" {
		a.Source = source
	}
	subject := events.AlertSubject(a.Severity, a.VMKey)
	env, err := events.New(events.TypeAlert, source, subject, a)
	if err != nil {
		return fmt.Errorf("bus: alert %s: %w", a.Code, err)
	}
	if id != "" {
		env.ID = id
	}
	if _, err := c.Publish(ctx, subject, env); err != nil {
		return fmt.Errorf("bus: publish alert %s: %w", a.Code, err)
	}
	return nil
}
