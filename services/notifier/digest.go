package notifier

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// maxDigest bounds the alerts of one digest.
const maxDigest = 100

// digester holds a rate-limited subscription to one delivery per
// interval: an alert that finds the interval used joins the pending
// digest, which is sent as one notification ("37 alerts in the last
// minute", with the list) when the interval allows. Each alert's message
// stays unacknowledged until its digest is delivered or dead-lettered.
type digester struct {
	w        *worker
	interval time.Duration

	mu      sync.Mutex
	next    time.Time // when the next delivery may go
	pending *batch
}

type batch struct {
	due       time.Time
	ns        []sink.Notification
	published time.Time // the oldest alert's
	done      chan struct{}
	err       error
}

func newDigester(w *worker, interval time.Duration) *digester {
	return &digester{w: w, interval: interval}
}

// submit delivers n now if the rate allows, otherwise with the next digest.
func (d *digester) submit(ctx context.Context, n sink.Notification, published time.Time) error {
	d.mu.Lock()
	now := time.Now()
	if d.pending == nil && !now.Before(d.next) {
		d.next = now.Add(d.interval)
		d.mu.Unlock()
		return d.w.send(ctx, n, published)
	}
	b := d.pending
	lead := false
	if b == nil || len(b.ns) >= maxDigest {
		if b != nil {
			// Full: the next digest waits one more interval.
			d.next = b.due.Add(d.interval)
		}
		b = &batch{due: d.next, published: published, done: make(chan struct{})}
		d.pending = b
		d.next = b.due.Add(d.interval)
		lead = true
	}
	b.ns = append(b.ns, n)
	if published.Before(b.published) {
		b.published = published
	}
	d.mu.Unlock()
	if lead {
		return d.lead(ctx, b)
	}
	select {
	case <-b.done:
		return b.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lead waits until the batch is due, closes it and delivers it.
func (d *digester) lead(ctx context.Context, b *batch) error {
	t := time.NewTimer(time.Until(b.due))
	defer t.Stop()
	select {
	case <-ctx.Done():
		b.err = ctx.Err()
		d.close(b)
		close(b.done)
		return b.err
	case <-t.C:
	}
	d.close(b)
	n := b.ns[0]
	if len(b.ns) > 1 {
		n = digestOf(b.ns, d.w)
	}
	b.err = d.w.send(ctx, n, b.published)
	close(b.done)
	return b.err
}

// close takes b out of pending: later alerts start another digest.
func (d *digester) close(b *batch) {
	d.mu.Lock()
	if d.pending == b {
		d.pending = nil
	}
	d.mu.Unlock()
}

// digestOf is one notification for ns: the first alert, with the list.
func digestOf(ns []sink.Notification, w *worker) sink.Notification {
	first := ns[0]
	alerts := make([]events.Alert, len(ns))
	vms := map[string]bool{}
	state := sink.Resolved
	for i, n := range ns {
		alerts[i] = n.Alert
		if n.Alert.VMKey != "" {
			vms[n.Alert.VMKey] = true
		}
		if n.State == sink.Firing {
			state = sink.Firing
		}
	}
	a := first.Alert
	a.Message = fmt.Sprintf("%d alerts (%d VMs) in the last %s; the first: %s", len(ns), len(vms), time.Since(first.Time).Round(time.Second)+w.digest.interval, first.Alert.Message)
	return sink.Notification{ID: digestID(ns), Key: "digest/" + w.sub.ID, State: state, Alert: a, Digest: alerts,
		Time: time.Now().UTC(), Source: first.Source, ConsoleURL: first.ConsoleURL}
}
