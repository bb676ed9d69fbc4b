package attestworker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// errConflict is returned by a compare-and-set write that lost to another
// writer.
var errConflict = errors.New("attest-worker: status changed concurrently")

// statusStore reads and writes vigil-status records with compare-and-set.
type statusStore struct{ kv jetstream.KeyValue }

// get returns the VM's record and its revision; exists is false when there
// is none.
func (s statusStore) get(ctx context.Context, vm string) (st events.VMStatus, rev uint64, exists bool, err error) {
	e, err := s.kv.Get(ctx, vm)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return events.VMStatus{}, 0, false, nil
	}
	if err != nil {
		return events.VMStatus{}, 0, false, fmt.Errorf("attest-worker: read status of %s: %w", vm, err)
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		// A record nobody can read is replaced by the next write.
		return events.VMStatus{}, e.Revision(), true, nil
	}
	return st, e.Revision(), true, nil
}

// put writes st if the record is still at rev (or, when exists is false,
// still absent). It returns errConflict when another writer came first.
func (s statusStore) put(ctx context.Context, st events.VMStatus, rev uint64, exists bool) (uint64, error) {
	b, err := json.Marshal(st)
	if err != nil {
		return 0, fmt.Errorf("attest-worker: encode status of %s: %w", st.VMKey, err)
	}
	var nrev uint64
	if exists {
		nrev, err = s.kv.Update(ctx, st.VMKey, b, rev)
	} else {
		nrev, err = s.kv.Create(ctx, st.VMKey, b)
	}
	switch {
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch), errors.Is(err, jetstream.ErrKeyExists):
		return 0, errConflict
	case err != nil:
		return 0, fmt.Errorf("attest-worker: write status of %s: %w", st.VMKey, err)
	}
	return nrev, nil
}

// inventory reads the VM records ingest keeps in vigil-vms.
type inventory struct{ kv jetstream.KeyValue }

// vmRecord is the part of an events.VM inventory record a job needs: the
// identity to verify against, whether the VM is deleted and the trace of
// ingest's last write (events.VM.Trace). Decoding only
// these fields skips the record's times and findings.
type vmRecord struct {
	ResourceID string `json:"resource_id"`
	VMID       string `json:"vm_id"`
	Deleted    bool   `json:"deleted"`
	Trace      string `json:"trace"`
}

// get returns the VM's inventory record; ok is false when ingest has none.
func (i inventory) get(ctx context.Context, vm string) (vmRecord, bool, error) {
	e, err := i.kv.Get(ctx, vm)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return vmRecord{}, false, nil
	}
	if err != nil {
		return vmRecord{}, false, fmt.Errorf("attest-worker: read inventory of %s: %w", vm, err)
	}
	var rec vmRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil {
		return vmRecord{}, false, nil
	}
	return rec, true, nil
}
