package attestworker

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
)

// The sweep adopts a running VM without a status record, but not while a
// job of the VM is still on VIGIL_JOBS: a creation job that runs slowly
// (a loaded worker) would otherwise be followed by a second attestation
// for the same VM (seen in TestTwoWorkersShareTheFleetWithNoDoubleAndNoGap).
func TestAdoptLeavesAVMWithAPendingJobToThatJob(t *testing.T) {
	_, conn, ctx := testEnv(t)
	svc, err := service.Start(ctx, Service, service.Options{Conn: conn, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Stop(); _ = svc.Wait() })
	w, err := newWorker(ctx, testConfig(conn, "w1").withDefaults(), svc, hooks{})
	if err != nil {
		t.Fatal(err)
	}
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/slow-created")
	rec := events.VM{VMKey: vm, ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/slow-created", PowerState: "running"}
	if _, err := enqueue(ctx, conn, "test", "created-job", events.Job{VMKey: vm, Reason: "created"}); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if adopted, err := w.adopt(ctx, vm, rec, "sweep-1", now); err != nil || adopted {
		t.Fatalf("adopt with the creation job pending = %v, %v; want false, nil", adopted, err)
	}
	if _, _, exists, err := w.status.get(ctx, vm); err != nil || exists {
		t.Fatalf("status record after adopt with a pending job: exists %v, err %v; want none", exists, err)
	}
	// The job is done (acknowledged: it leaves the work queue) but stored
	// no status (lost): now the sweep adopts the VM.
	cons, err := conn.JS.CreateConsumer(ctx, events.StreamJobs, jetstream.ConsumerConfig{Durable: "test-drain", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatal(err)
	}
	if adopted, err := w.adopt(ctx, vm, rec, "sweep-2", now); err != nil || !adopted {
		t.Fatalf("adopt without a pending job = %v, %v; want true, nil", adopted, err)
	}
}
