package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

// errConflict: the record changed between read and write (compare and set
// lost); the caller re-reads and decides again.
var errConflict = errors.New("inventory record changed concurrently")

// maxCASAttempts bounds compare-and-set retries of one update.
const maxCASAttempts = 16

// inventory is the vigil-vms bucket: one events.VM per VM key, updated
// only by compare and set on the KV revision.
type inventory struct {
	kv jetstream.KeyValue
	// now and skew bound the times of records as they are read (bound).
	now  func() time.Time
	skew time.Duration
}

// record is a stored record with its revision (0 when absent).
type record struct {
	VM  events.VM
	Rev uint64
}

func (r record) exists() bool { return r.Rev != 0 }

func (inv *inventory) get(ctx context.Context, key string) (record, error) {
	e, err := inv.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return record{}, nil
	}
	if err != nil {
		return record{}, fmt.Errorf("inventory: read %s: %w", key, err)
	}
	var vm events.VM
	if err := json.Unmarshal(e.Value(), &vm); err != nil {
		return record{}, fmt.Errorf("inventory: decode %s: %w", key, err)
	}
	inv.bound(&vm)
	return record{VM: vm, Rev: e.Revision()}, nil
}

// bound treats an event time that lies beyond the time the record was
// written (plus the allowed skew) as that time: the change cannot have
// happened later than ingest recorded it. Such a record was stored before
// event times were bounded on arrival; left as it is, it would supersede
// every genuine event and keep reconcile away until its date. The record
// is written back bounded with its next update.
func (inv *inventory) bound(vm *events.VM) {
	written := inv.now()
	if !vm.UpdatedAt.IsZero() && vm.UpdatedAt.Before(written) {
		written = vm.UpdatedAt
	}
	if eventgrid.CheckTime(vm.EventTime, written, inv.skew) != nil {
		vm.EventTime = written
	}
	if eventgrid.CheckTime(vm.LiveMigratedAt, written, inv.skew) != nil {
		vm.LiveMigratedAt = written
	}
}

// put writes vm if the record is still at rev (0: still absent), with the
// trace of ctx.
func (inv *inventory) put(ctx context.Context, key string, vm events.VM, rev uint64) (uint64, error) {
	vm.Trace = bus.TraceParent(ctx)
	b, err := json.Marshal(vm)
	if err != nil {
		return 0, fmt.Errorf("inventory: encode %s: %w", key, err)
	}
	var n uint64
	if rev == 0 {
		n, err = inv.kv.Create(ctx, key, b)
	} else {
		n, err = inv.kv.Update(ctx, key, b, rev)
	}
	if err == nil {
		return n, nil
	}
	if bus.IsRevisionConflict(err) {
		return 0, errConflict
	}
	return 0, fmt.Errorf("inventory: write %s: %w", key, err)
}

// all returns every record of the bucket.
func (inv *inventory) all(ctx context.Context) (map[string]record, error) {
	w, err := inv.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("inventory: list: %w", err)
	}
	defer func() { _ = w.Stop() }()
	out := map[string]record{}
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return out, nil
			}
			if e == nil {
				return out, nil
			}
			var vm events.VM
			if err := json.Unmarshal(e.Value(), &vm); err != nil {
				continue
			}
			inv.bound(&vm)
			out[e.Key()] = record{VM: vm, Rev: e.Revision()}
		}
	}
}
