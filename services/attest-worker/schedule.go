package attestworker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// Headers of nats-server message schedules (ADR-51).
const (
	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
)

// Job reasons the worker writes.
const (
	reasonSchedule = "schedule" // the VM's interval came round
	reasonRetry    = "retry"    // the previous attempt got no evidence
	reasonSweep    = "sweep"    // the sweep found the VM overdue or never scheduled
)

// scheduledReason reports whether a job comes from the schedule rather than
// from something that happened to the VM (ingest, an operator).
func scheduledReason(r string) bool {
	return r == reasonSchedule || r == reasonRetry || r == reasonSweep
}

// typeSweep is the body type of the fleet sweep's repeating schedule. It
// stays inside VIGIL_SCHEDULE.
const typeSweep = "io.vigil.attest.sweep.v1"

// sweepTick is the payload of a sweep schedule.
type sweepTick struct {
	Every string `json:"every"`
}

// scheduler writes message schedules into VIGIL_SCHEDULE.
type scheduler struct {
	conn   *bus.Conn
	stream jetstream.Stream
	source string
}

// at schedules job for job.DueAt: the schedule fires job into
// vigil.schedule.due.<vm>, and replaces any schedule the VM had.
func (s *scheduler) at(ctx context.Context, job events.Job) error {
	vm := job.VMKey
	if job.RequestedAt.IsZero() {
		job.RequestedAt = time.Now().UTC()
	}
	job.DueAt = job.DueAt.UTC()
	env, err := events.New(events.TypeJob, s.source, events.ScheduleSubject(vm), job)
	if err != nil {
		return err
	}
	// No trace context: the attestation the schedule fires starts a trace
	// of its own instead of extending this one interval after interval.
	m, err := bus.Msg(context.Background(), events.ScheduleSubject(vm), env)
	if err != nil {
		return err
	}
	m.Header.Set(headerSchedule, "@at "+job.DueAt.Format(time.RFC3339Nano))
	m.Header.Set(headerScheduleTarget, events.ScheduleDueSubject(vm))
	if _, err := s.conn.JS.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("attest-worker: schedule %s at %s: %w", vm, job.DueAt.Format(time.RFC3339), err)
	}
	return nil
}

// cancel removes the VM's pending schedule.
func (s *scheduler) cancel(ctx context.Context, vm string) error {
	err := s.stream.Purge(ctx, jetstream.WithPurgeSubject(events.ScheduleSubject(vm)))
	if err != nil {
		return fmt.Errorf("attest-worker: cancel schedule of %s: %w", vm, err)
	}
	return nil
}

// pending returns the VM's pending schedule, if any.
func (s *scheduler) pending(ctx context.Context, vm string) (events.Job, bool, error) {
	m, err := s.stream.GetLastMsgForSubject(ctx, events.ScheduleSubject(vm))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return events.Job{}, false, nil
	}
	if err != nil {
		return events.Job{}, false, fmt.Errorf("attest-worker: read schedule of %s: %w", vm, err)
	}
	env, err := events.Parse(m.Data)
	if err != nil {
		return events.Job{}, false, nil
	}
	var job events.Job
	if err := env.Decode(events.TypeJob, &job); err != nil {
		return events.Job{}, false, nil
	}
	return job, true, nil
}

// ensureSweep makes sure the fleet-wide repeating sweep schedule exists
// with the period every. Every worker calls it at start; it writes only
// when the schedule is missing or has another period.
func (s *scheduler) ensureSweep(ctx context.Context, every time.Duration) error {
	pattern := "@every " + every.String()
	m, err := s.stream.GetLastMsgForSubject(ctx, events.SubjectSweepSchedule)
	switch {
	case err == nil && m.Header.Get(headerSchedule) == pattern:
		return nil
	case err != nil && !errors.Is(err, jetstream.ErrMsgNotFound):
		return fmt.Errorf("attest-worker: read sweep schedule: %w", err)
	}
	env, err := events.New(typeSweep, s.source, events.SubjectSweepSchedule, sweepTick{Every: every.String()})
	if err != nil {
		return err
	}
	msg, err := bus.Msg(context.Background(), events.SubjectSweepSchedule, env)
	if err != nil {
		return err
	}
	msg.Header.Set(headerSchedule, pattern)
	msg.Header.Set(headerScheduleTarget, events.SubjectSweepDue)
	if _, err := s.conn.JS.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("attest-worker: write sweep schedule: %w", err)
	}
	return nil
}

// enqueue puts job on VIGIL_JOBS under envelope id (so that publishing it
// again after a crash is de-duplicated). absorbed is true when the VM
// already had a pending job, which will attest it anyway.
func enqueue(ctx context.Context, conn *bus.Conn, source, id string, job events.Job) (absorbed bool, err error) {
	if job.RequestedAt.IsZero() {
		job.RequestedAt = time.Now().UTC()
	}
	env, err := events.New(events.TypeJob, source, events.AttestJobSubject(job.VMKey), job)
	if err != nil {
		return false, err
	}
	if id != "" {
		env.ID = id
	}
	_, err = conn.Publish(ctx, events.AttestJobSubject(job.VMKey), env)
	if err != nil && strings.Contains(err.Error(), "maximum messages per subject exceeded") {
		return true, nil
	}
	return false, err
}
