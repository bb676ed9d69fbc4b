package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

// Origins of inbound events (events.Raw.Source and events.Lifecycle.Origin).
const (
	OriginEventGrid = "eventgrid"
	OriginNamespace = "namespace"
	OriginReconcile = "reconcile"
)

// ServiceName is the CloudEvents source prefix of everything ingest
// publishes ("vigil-ingest/<origin>").
const ServiceName = "vigil-ingest"

// derivedID is a deterministic event id: the same Azure event always maps
// to the same id of a given kind, so that JetStream stores it once.
func derivedID(kind string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte(kind))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// RawID is the envelope id (and Nats-Msg-Id) of the raw copy of Azure event
// azureID.
func RawID(azureID string) string { return derivedID("raw", azureID) }

// LifecycleID is the envelope id of the lifecycle event normalised from
// Azure event azureID.
func LifecycleID(azureID string) string { return derivedID("lifecycle", azureID) }

// rawOverhead bounds what the raw envelope adds around an event, beyond
// twice the event's subject (it appears escaped in the envelope).
const rawOverhead = 1024

// rawStore stores inbound events on VIGIL_RAW with async publishes: every
// event of a delivery is sent, then every acknowledgement awaited.
type rawStore struct {
	js         jetstream.JetStream
	maxPayload int
	window     int // most publishes of one delivery awaiting acks at once
	now        func() time.Time
}

func newRawStore(nc *nats.Conn) (*rawStore, error) {
	js, err := jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(16384),
		jetstream.WithPublishAsyncTimeout(20*time.Second))
	if err != nil {
		return nil, fmt.Errorf("ingest: jetstream: %w", err)
	}
	return &rawStore{js: js, maxPayload: int(nc.MaxPayload()), window: 4096, now: time.Now}, nil
}

// maxEventBytes is the largest event that fits the server's max_payload.
func (s *rawStore) maxEventBytes() int { return s.maxPayload - rawOverhead }

// store returns nil once every event is stored in JetStream (a duplicate
// counts as stored). An event that cannot fit a message returns an error
// wrapping eventgrid.ErrTooLarge; anything else is a storage failure.
func (s *rawStore) store(ctx context.Context, origin string, evs []eventgrid.Event) error {
	subject := events.RawSubject(origin)
	received := s.now().UTC()
	pending := make([]jetstream.PubAckFuture, 0, min(len(evs), s.window))
	wait := func(f jetstream.PubAckFuture) error {
		select {
		case <-f.Ok():
			return nil
		case err := <-f.Err():
			return fmt.Errorf("store raw event: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("store raw event: %w", ctx.Err())
		}
	}
	for i := range evs {
		ev := &evs[i]
		data := appendRawEnvelope(make([]byte, 0, len(ev.Raw)+2*len(ev.Subject)+2*len(ev.ID)+320), origin, ev, received)
		if len(data)+256 > s.maxPayload {
			return fmt.Errorf("%w: event %s needs %d bytes stored, the server allows %d", eventgrid.ErrTooLarge, ev.ID, len(data), s.maxPayload)
		}
		m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
		id := RawID(ev.ID)
		m.Header[jetstream.MsgIDHeader] = []string{id}
		m.Header[bus.HeaderEventType] = []string{events.TypeRaw}
		bus.InjectTrace(ctx, m.Header)
		for {
			f, err := s.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Second))
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) && len(pending) > 0 {
				if err := wait(pending[0]); err != nil {
					return err
				}
				pending = pending[1:]
				continue
			}
			if err != nil {
				return fmt.Errorf("store raw event: %w", err)
			}
			pending = append(pending, f)
			break
		}
		if len(pending) >= s.window {
			if err := wait(pending[0]); err != nil {
				return err
			}
			pending = pending[1:]
		}
	}
	for _, f := range pending {
		if err := wait(f); err != nil {
			return err
		}
	}
	return nil
}

// appendRawEnvelope encodes the CloudEvents envelope of an events.Raw
// payload around ev without re-encoding the event: ev.Raw was validated as
// JSON when it was parsed and is embedded verbatim.
func appendRawEnvelope(b []byte, origin string, ev *eventgrid.Event, received time.Time) []byte {
	t := ev.Time
	if t.IsZero() {
		t = received
	}
	b = append(b, `{"specversion":"1.0","id":"`...)
	b = append(b, RawID(ev.ID)...)
	b = append(b, `","type":"`+events.TypeRaw+`","source":"`+ServiceName+`/`...)
	b = appendEscaped(b, origin)
	b = append(b, '"')
	if ev.Subject != "" {
		b = append(b, `,"subject":"`...)
		b = appendEscaped(b, ev.Subject)
		b = append(b, '"')
	}
	b = append(b, `,"time":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","datacontenttype":"application/json","data":{"source":"`...)
	b = appendEscaped(b, origin)
	b = append(b, `","schema":"`...)
	b = append(b, ev.Schema...)
	b = append(b, `","event_id":"`...)
	b = appendEscaped(b, ev.ID)
	b = append(b, `","received_at":"`...)
	b = received.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","event":`...)
	b = append(b, ev.Raw...)
	b = append(b, "}}"...)
	return b
}

// appendEscaped appends s as the inside of a JSON string.
func appendEscaped(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}
