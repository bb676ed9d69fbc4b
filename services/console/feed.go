package console

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// feed keeps the index current from the bus: watches of vigil-vms,
// vigil-status and vigil-grants, and ordered consumers of VIGIL_EVENTS,
// VIGIL_ALERTS and VIGIL_CHECKPOINTS. It only reads (the console
// principal's permissions).
type feed struct {
	js    jetstream.JetStream
	index *Index
	audit *auditView
	log   *slog.Logger
}

// watchBucket applies every value of bucket, then every change, until ctx
// ends; loaded is called once the initial values are in.
func (f *feed) watchBucket(ctx context.Context, bucket string, apply func(jetstream.KeyValueEntry), loaded func()) error {
	kv, err := f.js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch %s: %w", bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("watch %s: ended", bucket)
			}
			if e == nil {
				loaded()
				continue
			}
			apply(e)
		}
	}
}

// applyRecord returns the apply of a bucket whose values are records of
// type T, each about the VM that vmKey names: a put is decoded, checked
// to name a valid VM key and given to put; an unreadable one is logged as
// an unreadable what and skipped, and deletes change nothing.
func applyRecord[T any](log *slog.Logger, what string, vmKey func(*T) string, put func(T)) func(jetstream.KeyValueEntry) {
	return func(e jetstream.KeyValueEntry) {
		if e.Operation() != jetstream.KeyValuePut {
			return
		}
		var rec T
		if err := json.Unmarshal(e.Value(), &rec); err != nil || !events.ValidVMKey(vmKey(&rec)) {
			log.Warn("unreadable "+what+" record", "key", e.Key(), "error", err)
			return
		}
		put(rec)
	}
}

func (f *feed) applyGrant(e jetstream.KeyValueEntry) {
	if e.Operation() != jetstream.KeyValuePut {
		f.index.PutGrant(e.Key(), grants.Grant{}, true)
		return
	}
	var g grants.Grant
	if err := json.Unmarshal(e.Value(), &g); err != nil {
		f.log.Warn("unreadable grant record", "key", e.Key(), "error", err)
		return
	}
	f.index.PutGrant(e.Key(), g, false)
}

// follow consumes stream from the policy's start until ctx ends.
func (f *feed) follow(ctx context.Context, stream string, policy jetstream.DeliverPolicy, handle func(jetstream.Msg)) error {
	cons, err := f.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: policy})
	if err != nil {
		return fmt.Errorf("follow %s: %w", stream, err)
	}
	cc, err := cons.Consume(handle)
	if err != nil {
		return fmt.Errorf("follow %s: %w", stream, err)
	}
	<-ctx.Done()
	cc.Stop()
	return nil
}

func (f *feed) onEvent(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	env, err := events.Parse(m.Data())
	if err != nil {
		return
	}
	f.index.AddEvent(md.Sequence.Stream, md.Timestamp, m.Subject(), env)
}

func (f *feed) onAlert(m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	env, err := events.Parse(m.Data())
	if err != nil {
		return
	}
	var a events.Alert
	if env.Decode(events.TypeAlert, &a) != nil {
		return
	}
	f.index.AddAlert(md.Sequence.Stream, a)
}

func (f *feed) onCheckpoint(m jetstream.Msg) {
	f.audit.published(m.Data())
}

// loadedGate counts the watches whose initial values are in.
type loadedGate struct {
	once sync.Once
	mu   sync.Mutex
	left int
	done func()
}

func (g *loadedGate) loaded() func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			g.mu.Lock()
			g.left--
			last := g.left == 0
			g.mu.Unlock()
			if last {
				g.once.Do(g.done)
			}
		})
	}
}

// run starts every watch and consumer as tasks of start; ready is called
// once the buckets' current values are in the index.
func (f *feed) run(start func(name string, task func(context.Context) error), ready func()) {
	gate := &loadedGate{left: 3, done: ready}
	buckets := []struct {
		name  string
		apply func(jetstream.KeyValueEntry)
	}{
		{events.BucketVMs, applyRecord(f.log, "inventory", func(vm *events.VM) string { return vm.VMKey }, f.index.PutVM)},
		{events.BucketStatus, applyRecord(f.log, "status", func(st *events.VMStatus) string { return st.VMKey }, f.index.PutStatus)},
		{events.BucketGrants, f.applyGrant},
	}
	for _, b := range buckets {
		loaded := gate.loaded()
		start("watch "+b.name, func(ctx context.Context) error { return f.watchBucket(ctx, b.name, b.apply, loaded) })
	}
	start("follow events", func(ctx context.Context) error {
		return f.follow(ctx, events.StreamEvents, jetstream.DeliverAllPolicy, f.onEvent)
	})
	start("follow alerts", func(ctx context.Context) error {
		return f.follow(ctx, events.StreamAlerts, jetstream.DeliverAllPolicy, f.onAlert)
	})
	start("follow checkpoints", func(ctx context.Context) error {
		err := f.follow(ctx, events.StreamCheckpoints, jetstream.DeliverLastPolicy, f.onCheckpoint)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return nil
		}
		return err
	})
}
