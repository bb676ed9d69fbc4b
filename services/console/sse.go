package console

import (
	"bytes"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Bounds of the event broker.
const (
	sseBacklog    = 4096 // events kept for Last-Event-ID resumption
	sseSubscriber = 512  // events queued per browser before it is dropped
)

// sseEvent is one Server-Sent Event.
type sseEvent struct {
	id   uint64
	name string
	vm   string // the VM a "vm" event is about
	data []byte // one line (JSON)
}

// subscriber is one browser's stream.
type subscriber struct {
	ch chan sseEvent
	// vms, when not nil, are the only VMs whose events the browser wants
	// (the rows its page shows); nil: every VM.
	vms map[string]bool
}

func (s *subscriber) wants(ev sseEvent) bool {
	return ev.vm == "" || s.vms == nil || s.vms[ev.vm]
}

// broker fans the console's live events out to every open browser. It
// keeps the newest events so that a browser that reconnects with
// Last-Event-ID gets what it missed; one that fell further behind gets a
// "reset" event (and reloads its page). A browser that does not keep up is
// disconnected rather than allowed to slow the others; its EventSource
// reconnects and resumes.
type broker struct {
	mu     sync.Mutex
	nextID uint64
	ring   []sseEvent // the newest events, oldest first
	subs   map[*subscriber]struct{}
}

func newBroker() *broker {
	return &broker{nextID: 1, subs: map[*subscriber]struct{}{}}
}

// listeners is the number of connected browsers.
func (b *broker) listeners() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.subs)
}

// publish sends an event to every browser that wants it; vm names the VM
// the event is about ("" for one about no VM).
func (b *broker) publish(name, vm string, data []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ev := sseEvent{id: b.nextID, name: name, vm: vm, data: data}
	b.nextID++
	if len(b.ring) == sseBacklog {
		copy(b.ring, b.ring[1:])
		b.ring = b.ring[:sseBacklog-1]
	}
	b.ring = append(b.ring, ev)
	for sub := range b.subs {
		if !sub.wants(ev) {
			continue
		}
		select {
		case sub.ch <- ev:
		default:
			delete(b.subs, sub)
			close(sub.ch)
		}
	}
}

// subscribe registers a browser that has seen events up to lastID (0:
// none) and wants the events of vms (nil: every VM). It returns the events
// it missed, and resumed false when they are no longer all kept.
func (b *broker) subscribe(lastID uint64, vms map[string]bool) (sub *subscriber, missed []sseEvent, resumed bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	sub = &subscriber{ch: make(chan sseEvent, sseSubscriber), vms: vms}
	b.subs[sub] = struct{}{}
	if lastID == 0 {
		return sub, nil, true
	}
	if lastID >= b.nextID {
		return sub, nil, false // from another run of the console
	}
	if len(b.ring) > 0 && b.ring[0].id > lastID+1 {
		return sub, nil, false
	}
	for _, ev := range b.ring {
		if ev.id > lastID && sub.wants(ev) {
			missed = append(missed, ev)
		}
	}
	return sub, missed, true
}

func (b *broker) unsubscribe(sub *subscriber) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.subs[sub]; ok {
		delete(b.subs, sub)
		close(sub.ch)
	}
}

// maxWatched bounds the VMs one stream may ask for (?vm=KEY&vm=KEY...).
const maxWatched = 1000

// serve streams events to one browser until it goes away, it falls behind
// or done closes; it sends a comment every heartbeat. Query parameters
// vm=KEY (repeated) limit the "vm" events to those VMs: the page's rows.
func (b *broker) serve(w http.ResponseWriter, r *http.Request, heartbeat time.Duration, done <-chan struct{}) {
	var lastID uint64
	if s := r.Header.Get("Last-Event-ID"); s != "" {
		lastID, _ = strconv.ParseUint(s, 10, 64)
	}
	var vms map[string]bool
	if q := r.URL.Query(); q.Has("vm") {
		keys := q["vm"]
		if len(keys) > maxWatched {
			http.Error(w, "too many VMs", http.StatusRequestURITooLong)
			return
		}
		vms = make(map[string]bool, len(keys))
		for _, k := range keys {
			vms[k] = true
		}
	}
	rc := http.NewResponseController(w)
	// The server's write timeout suits pages, not a stream that stays open.
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sub, missed, resumed := b.subscribe(lastID, vms)
	defer b.unsubscribe(sub)
	ch := sub.ch
	var buf bytes.Buffer
	buf.WriteString("retry: 1000\n\n")
	if !resumed {
		buf.WriteString("event: reset\ndata: {}\n\n")
	}
	for _, ev := range missed {
		writeEvent(&buf, ev)
	}
	if !flush(w, rc, &buf) {
		return
	}
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return // fell behind: the browser reconnects and resumes
			}
			writeEvent(&buf, ev)
			// Take whatever else is queued in the same write.
			for more := true; more; {
				select {
				case ev, ok := <-ch:
					if !ok {
						return
					}
					writeEvent(&buf, ev)
				default:
					more = false
				}
			}
		case <-tick.C:
			buf.WriteString(": heartbeat\n\n")
		case <-r.Context().Done():
			return
		case <-done:
			return
		}
		if !flush(w, rc, &buf) {
			return
		}
	}
}

func writeEvent(buf *bytes.Buffer, ev sseEvent) {
	buf.WriteString("id: ")
	buf.WriteString(strconv.FormatUint(ev.id, 10))
	buf.WriteString("\nevent: ")
	buf.WriteString(ev.name)
	buf.WriteString("\ndata: ")
	buf.Write(ev.data)
	buf.WriteString("\n\n")
}

func flush(w http.ResponseWriter, rc *http.ResponseController, buf *bytes.Buffer) bool {
	_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := w.Write(buf.Bytes())
	buf.Reset()
	if err == nil {
		err = rc.Flush()
	}
	_ = rc.SetWriteDeadline(time.Time{})
	return err == nil
}
