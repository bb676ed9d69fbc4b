package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
)

// fleetState is what the bus says about the fleet, read as an
// administrator.
type fleetState struct {
	status map[string]events.VMStatus
	grants map[string][]grant // by VM
	// alerted are the VMs with a vm.untrusted alert firing: not any alert
	// (every VM gets an info alert for its configuration when ingest
	// first reads it, and the tamper scenario drifts a healthy VM's
	// configuration, which fires and resolves a finding alert).
	alerted map[string]bool
	events  uint64 // last sequence of VIGIL_EVENTS
}

// grant is the part of keyguard's grant record read here.
type grant struct {
	VMKey      string `json:"vm_key"`
	State      string `json:"state"`
	RevokedFor string `json:"revoked_for"`
}

// readFleet reads every VM's status and grants, the VMs alerted about as
// untrusted, and the events stream's last sequence.
func readFleet(ctx context.Context, js jetstream.JetStream) (*fleetState, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	st := &fleetState{status: map[string]events.VMStatus{}, grants: map[string][]grant{}, alerted: map[string]bool{}}
	if err := readBucket(ctx, js, events.BucketStatus, func(b []byte) error {
		var s events.VMStatus
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		st.status[s.VMKey] = s
		return nil
	}); err != nil {
		return nil, err
	}
	if err := readBucket(ctx, js, events.BucketGrants, func(b []byte) error {
		var g grant
		if err := json.Unmarshal(b, &g); err != nil || g.VMKey == "" {
			return nil // not a grant record
		}
		st.grants[g.VMKey] = append(st.grants[g.VMKey], g)
		return nil
	}); err != nil {
		return nil, err
	}
	s, err := js.Stream(ctx, events.StreamEvents)
	if err != nil {
		return nil, err
	}
	info, err := s.Info(ctx)
	if err != nil {
		return nil, err
	}
	st.events = info.State.LastSeq
	err = readStream(ctx, js, events.StreamAlerts, func(m jetstream.Msg) error {
		var env struct {
			Data events.Alert `json:"data"`
		}
		if json.Unmarshal(m.Data(), &env) == nil && env.Data.VMKey != "" {
			st.alerted[env.Data.VMKey] = untrustedAlert(env.Data, st.alerted[env.Data.VMKey])
		}
		return nil
	})
	return st, err
}

// untrustedAlert is whether a VM's vm.untrusted alert fires after a, in
// stream order, when before it did (was): a vm.untrusted raises it, a
// resolve of the VM's attestation key ends it, other alerts change
// nothing.
func untrustedAlert(a events.Alert, was bool) bool {
	switch {
	case a.Code == "vm.untrusted" && !a.Resolved():
		return true
	case a.Resolved() && a.Key == events.AlertKey(a.VMKey, "attestation"):
		return false
	}
	return was
}

// readBucket calls f with the value of every key of a KV bucket.
func readBucket(ctx context.Context, js jetstream.JetStream, bucket string, f func([]byte) error) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("bucket %s: %w", bucket, err)
	}
	defer w.Stop()
	for {
		select {
		case e := <-w.Updates():
			if e == nil {
				return nil // the initial values are all in
			}
			if err := f(e.Value()); err != nil {
				return fmt.Errorf("bucket %s, key %s: %w", bucket, e.Key(), err)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// readStream calls f with every message of a stream, up to its last
// sequence when the read began.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, f func(jetstream.Msg) error) error {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return err
	}
	for {
		batch, err := c.Fetch(256, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return err
		}
		for m := range batch.Messages() {
			if err := f(m); err != nil {
				return err
			}
			if md, err := m.Metadata(); err == nil && md.Sequence.Stream >= last {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return err
		}
	}
}

// fleetExpect is what the tamper scenario of a simulated fleet of vms VMs
// makes (cmd/vigil/internal/fleet): max(3, vms/10) VMs go bad (at most
// half), rotating through a tampered measurement, debug enabled and
// silence; the first two make a VM untrusted.
func fleetExpect(vms int) (untrusted int) {
	bad := min(max(3, vms/10), vms/2)
	for i := range bad {
		if i%3 != 2 {
			untrusted++
		}
	}
	return untrusted
}

// judge says whether the fleet is where the tamper scenario must bring it:
// done when every VM has a verdict and the untrusted ones (at least the
// scenario's) are revoked and alerted (vm.untrusted firing); an error, at
// once, for a VM whose key is revoked while it is trusted or warning
// (releasable: falsely revoked; no VM of the scenario recovers).
func (st *fleetState) judge(vms, wantUntrusted int) (done bool, summary string, err error) {
	var attested, trusted, untrusted, revoked int
	var pending []string
	for vm, s := range st.status {
		if !s.LastVerdictAt.IsZero() {
			attested++
		}
		switch s.Status {
		case events.StatusTrusted:
			trusted++
		case events.StatusUntrusted:
			untrusted++
		}
		isRevoked := slices.ContainsFunc(st.grants[vm], func(g grant) bool { return g.State == "revoked" })
		if isRevoked {
			revoked++
		}
		switch {
		case isRevoked && s.Status.Releasable():
			return false, "", fmt.Errorf("VM %s is %s (since %s, last verdict %s at %s) but its key is revoked (%+v)",
				vm, s.Status, s.Since.Format(time.RFC3339), s.LastVerdictStatus, s.LastVerdictAt.Format(time.RFC3339), st.grants[vm])
		case s.Status == events.StatusUntrusted && (!isRevoked || !st.alerted[vm]):
			pending = append(pending, fmt.Sprintf("%s (revoked %v, alerted %v)", vm, isRevoked, st.alerted[vm]))
		}
	}
	summary = fmt.Sprintf("%d VMs, %d attested, %d trusted, %d untrusted, %d revoked, events seq %d",
		len(st.status), attested, trusted, untrusted, revoked, st.events)
	done = len(st.status) == vms && attested == vms && untrusted >= wantUntrusted && len(pending) == 0
	if !done && len(pending) > 0 {
		summary += fmt.Sprintf("; untrusted but not yet revoked and alerted: %v", pending)
	}
	return done, summary, nil
}
