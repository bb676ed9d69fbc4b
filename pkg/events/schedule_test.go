package events_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// TestScheduleStreamFiresLatestScheduleOnce checks the properties the
// attest-worker's schedule relies on: a message schedule on
// vigil.schedule.vm.<vm> fires once into vigil.schedule.due.<vm>, a newer
// schedule for the same VM replaces the older one, and an acknowledged fired
// message leaves the work-queue stream.
func TestScheduleStreamFiresLatestScheduleOnce(t *testing.T) {
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/sched")
	schedule := func(at time.Time, body string) {
		m := nats.NewMsg(events.ScheduleSubject(vm))
		m.Data = []byte(body)
		m.Header.Set("Nats-Schedule", "@at "+at.UTC().Format(time.RFC3339Nano))
		m.Header.Set("Nats-Schedule-Target", events.ScheduleDueSubject(vm))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	schedule(start.Add(time.Hour), "replaced")
	schedule(start.Add(time.Second), "latest")
	cons, err := js.CreateOrUpdateConsumer(ctx, events.StreamSchedule, jetstream.ConsumerConfig{Durable: "t", FilterSubject: events.SubjectScheduleDue, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("schedule did not fire: %v", err)
	}
	if string(m.Data()) != "latest" || m.Subject() != events.ScheduleDueSubject(vm) {
		t.Fatalf("fired %q on %s", m.Data(), m.Subject())
	}
	if d := time.Since(start); d < 900*time.Millisecond {
		t.Fatalf("fired after %s, before its time", d)
	}
	if got := events.VMFromSubject(m.Subject()); got != vm {
		t.Fatalf("VMFromSubject(%s) = %q", m.Subject(), got)
	}
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cons.Next(jetstream.FetchMaxWait(1500 * time.Millisecond)); err == nil {
		t.Fatal("a replaced schedule fired too")
	}
	s, err := js.Stream(ctx, events.StreamSchedule)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 0 {
		t.Fatalf("schedule stream holds %d messages after the fired one was acked", info.State.Msgs)
	}
	if events.VMFromSubject(events.SubjectSweepDue) != "" {
		t.Fatal("the sweep subject names no VM")
	}
}
