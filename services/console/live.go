package console

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// Pace of the live stream.
const (
	rowBatch      = 100 * time.Millisecond // changed rows go out at most this often
	overviewEvery = time.Second            // the overview at most this often
)

// live turns the index's changes into Server-Sent Events: a "vm" event with
// the rendered row of each changed VM, an "overview" event with the
// rendered overview, an "alert" event with each new alert.
type live struct {
	index *Index
	srv   *server

	mu       sync.Mutex
	dirty    map[string]struct{}
	alerts   []Alert
	overview bool
	wake     chan struct{}
}

func newLive(index *Index, srv *server) *live {
	l := &live{index: index, srv: srv, dirty: map[string]struct{}{}, wake: make(chan struct{}, 1)}
	index.notify(l.changed, l.alerted)
	return l
}

// changed and alerted are called by the index with its lock held: they
// only note what to send.
func (l *live) changed(vm string) {
	l.mu.Lock()
	l.dirty[vm] = struct{}{}
	l.overview = true
	l.mu.Unlock()
	l.poke()
}

func (l *live) alerted(a Alert) {
	l.mu.Lock()
	l.alerts = append(l.alerts, a)
	l.overview = true
	l.mu.Unlock()
	l.poke()
}

func (l *live) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *live) take() (dirty map[string]struct{}, alerts []Alert, overview bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	dirty, alerts, overview = l.dirty, l.alerts, l.overview
	l.dirty, l.alerts, l.overview = map[string]struct{}{}, nil, false
	return dirty, alerts, overview
}

// run sends the changes until ctx ends. Nothing is rendered while no
// browser listens (one that connects loads its page fresh).
func (l *live) run(ctx context.Context) error {
	lastOverview := time.Time{}
	pendingOverview := false
	tick := time.NewTicker(overviewEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-l.wake:
		case <-tick.C:
		}
		dirty, alerts, overview := l.take()
		pendingOverview = pendingOverview || overview
		if l.srv.broker.listeners() == 0 {
			pendingOverview = false
			continue
		}
		for vm := range dirty {
			row, ok := l.index.Row(vm)
			if !ok {
				continue
			}
			html, err := l.srv.renderFragment("row", l.srv.rowView(row, time.Now()))
			if err != nil {
				continue
			}
			l.send("vm", vm, map[string]string{"key": vm, "status": string(row.Status), "html": html})
		}
		for _, a := range alerts {
			html, err := l.srv.renderFragment("alert", a)
			if err != nil {
				continue
			}
			l.send("alert", "", map[string]string{"severity": string(a.Severity), "code": a.Code, "vm": a.VMKey, "state": alertState(a.Alert), "html": html})
		}
		if pendingOverview && time.Since(lastOverview) >= overviewEvery {
			now := time.Now()
			html, err := l.srv.renderFragment("overview", l.srv.overviewView(now))
			if err == nil {
				l.send("overview", "", map[string]string{"html": html})
			}
			lastOverview, pendingOverview = now, false
		}
		// Batch what changes next.
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(rowBatch):
		}
	}
}

func (l *live) send(name, vm string, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	l.srv.broker.publish(name, vm, b)
}
