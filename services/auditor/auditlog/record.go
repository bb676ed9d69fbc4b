// Package auditlog defines the entries of Vigil's audit log and reads,
// verifies, proves and searches such a log offline, with nothing but the log
// directory (a C2SP tlog-tiles tree) and the log's public key.
package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/canonjson"
)

// RecordVersion is the version of the entry format written by this package.
const RecordVersion = 1

// MaxEntrySize is the largest entry a tlog-tiles entry bundle can hold.
const MaxEntrySize = 1<<16 - 1

// Kinds of records.
const (
	// KindEvent records one message of the stream: a valid CloudEvent.
	KindEvent = "event"
	// KindInvalid records one message of the stream that is not a valid
	// CloudEvent (or too large to be logged whole): its bytes are kept
	// when they fit, their SHA-256 always.
	KindInvalid = "invalid"
	// KindGap records stream sequences that no longer existed in the
	// stream when the auditor reached them (deleted or expired before they
	// could be logged), so that the log accounts for every sequence.
	KindGap = "gap"
)

// Record is one entry of the audit log. Every entry is the RFC 8785
// canonical JSON encoding of a Record, and the records of a log cover the
// stream sequences 1, 2, 3, ... each exactly once.
type Record struct {
	V    int    `json:"v"`
	Kind string `json:"kind"`
	// Stream is the JetStream stream the message was stored in.
	Stream string `json:"stream"`
	// Seq is the message's stream sequence (for a gap: the last missing one).
	Seq uint64 `json:"seq"`
	// FirstSeq is the first missing sequence of a gap.
	FirstSeq uint64 `json:"first_seq,omitempty"`
	// Subject is the NATS subject the message was published on.
	Subject string `json:"subject,omitempty"`
	// Stored is when the stream stored the message (RFC 3339, UTC).
	Stored string `json:"stored,omitempty"`
	// Event is the canonical JSON of the CloudEvent. When the event is too
	// large for one entry its data member is left out and committed to by
	// DataSHA256 and DataSize instead.
	Event json.RawMessage `json:"event,omitempty"`
	// DataSHA256 is "sha256:<hex>" of the canonical JSON of the event's
	// data member, set only when that member was left out of Event.
	DataSHA256 string `json:"data_sha256,omitempty"`
	DataSize   int    `json:"data_size,omitempty"`
	// BodySHA256 is "sha256:<hex>" of the message body exactly as it was
	// on the bus; anyone holding the original message can match it.
	BodySHA256 string `json:"body_sha256,omitempty"`
	// Body holds the raw bytes of an invalid message when they fit.
	Body []byte `json:"body,omitempty"`
	// Reason explains an invalid record or a gap.
	Reason string `json:"reason,omitempty"`
}

// Envelope parses the record's CloudEvent (only for KindEvent records).
// Attribute names match exactly, as CloudEvents requires.
func (r *Record) Envelope() (events.Envelope, error) {
	if r.Kind != KindEvent || len(r.Event) == 0 {
		return events.Envelope{}, fmt.Errorf("auditlog: record of kind %q has no event", r.Kind)
	}
	var members map[string]json.RawMessage
	if err := json.Unmarshal(r.Event, &members); err != nil {
		return events.Envelope{}, fmt.Errorf("auditlog: record event: %w", err)
	}
	var e events.Envelope
	for name, dst := range map[string]*string{"specversion": &e.SpecVersion, "id": &e.ID, "type": &e.Type, "source": &e.Source,
		"subject": &e.Subject, "datacontenttype": &e.DataContentType} {
		if v, ok := members[name]; ok {
			if err := json.Unmarshal(v, dst); err != nil {
				return events.Envelope{}, fmt.Errorf("auditlog: record event %s: %w", name, err)
			}
		}
	}
	if v, ok := members["time"]; ok {
		if err := json.Unmarshal(v, &e.Time); err != nil {
			return events.Envelope{}, fmt.Errorf("auditlog: record event time: %w", err)
		}
	}
	e.Data = members["data"]
	return e, nil
}

// VMKey returns the VM key the record is about: taken from the subject
// (vigil.events.vm.<vm>.<kind>), else from the event data's vm_key member,
// else "".
func (r *Record) VMKey() string {
	if vm := events.VMFromSubject(r.Subject); vm != "" {
		return vm
	}
	if r.Kind != KindEvent {
		return ""
	}
	var ev struct {
		Data struct {
			VMKey string `json:"vm_key"`
		} `json:"data"`
	}
	if json.Unmarshal(r.Event, &ev) == nil {
		return ev.Data.VMKey
	}
	return ""
}

// FirstCovered returns the first stream sequence the record accounts for.
func (r *Record) FirstCovered() uint64 {
	if r.Kind == KindGap {
		return r.FirstSeq
	}
	return r.Seq
}

// ErrBadRecord is returned for an entry that is not a well-formed record.
var ErrBadRecord = errors.New("auditlog: malformed record")

// ParseRecord decodes and checks one log entry.
func ParseRecord(entry []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(entry, &r); err != nil {
		return Record{}, fmt.Errorf("%w: %w", ErrBadRecord, err)
	}
	switch {
	case r.V != RecordVersion:
		return Record{}, fmt.Errorf("%w: version %d, want %d", ErrBadRecord, r.V, RecordVersion)
	case r.Stream == "":
		return Record{}, fmt.Errorf("%w: missing stream", ErrBadRecord)
	case r.Seq == 0:
		return Record{}, fmt.Errorf("%w: missing seq", ErrBadRecord)
	}
	switch r.Kind {
	case KindEvent:
		if len(r.Event) == 0 {
			return Record{}, fmt.Errorf("%w: event record without event", ErrBadRecord)
		}
		var check envelopeCheck
		canon, err := canonjson.AppendTransform(make([]byte, 0, len(r.Event)), r.Event, check.member)
		if err != nil {
			return Record{}, fmt.Errorf("%w: event: %w", ErrBadRecord, err)
		}
		if err := check.result(); err != nil {
			return Record{}, fmt.Errorf("%w: %w", ErrBadRecord, err)
		}
		if !bytes.Equal(canon, r.Event) {
			return Record{}, fmt.Errorf("%w: event is not in canonical form", ErrBadRecord)
		}
	case KindInvalid:
		if r.BodySHA256 == "" {
			return Record{}, fmt.Errorf("%w: invalid record without body digest", ErrBadRecord)
		}
	case KindGap:
		if r.FirstSeq == 0 || r.FirstSeq > r.Seq {
			return Record{}, fmt.Errorf("%w: gap [%d, %d]", ErrBadRecord, r.FirstSeq, r.Seq)
		}
	default:
		return Record{}, fmt.Errorf("%w: unknown kind %q", ErrBadRecord, r.Kind)
	}
	return r, nil
}

// Message is one stream message to be logged.
type Message struct {
	Stream  string
	Seq     uint64
	Subject string
	Stored  time.Time
	Body    []byte
}

// EncodeMessage returns the log entry for a stream message. It never fails:
// a message that is not a valid CloudEvent becomes a KindInvalid record, and
// an event too large for one entry is logged with its data replaced by the
// data's digest (or, if even that is too large, as KindInvalid with the
// body's digest), so that every message is accounted for.
func EncodeMessage(m Message) []byte {
	return AppendMessage(make([]byte, 0, 256+len(m.Stream)+len(m.Subject)+len(m.Body)), m)
}

// AppendMessage appends the log entry for a stream message (see
// EncodeMessage) to dst and returns the extended slice.
func AppendMessage(dst []byte, m Message) []byte {
	if len(m.Body) > events.MaxEnvelopeSize {
		return append(dst, encodeInvalid(m, digest(m.Body), fmt.Sprintf("message of %d bytes exceeds the envelope limit of %d", len(m.Body), events.MaxEnvelopeSize))...)
	}
	// The common case, written in place: the members of an event record
	// in their canonical order, as encode would write them.
	b := append(dst, `{"body_sha256":"sha256:`...)
	sum := sha256.Sum256(m.Body)
	b = hex.AppendEncode(b, sum[:])
	b = append(b, `","event":`...)
	var check envelopeCheck
	b, err := canonjson.AppendTransform(b, m.Body, check.member)
	if err == nil {
		err = check.result()
	}
	if err != nil {
		return append(dst, encodeInvalid(m, digest(m.Body), err.Error())...)
	}
	b = append(b, `,"kind":"event"`...)
	if m.Seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, m.Seq, 10)
	}
	if !m.Stored.IsZero() {
		// RFC 3339 is plain ASCII: nothing to escape.
		b = append(b, `,"stored":"`...)
		b = m.Stored.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if m.Stream != "" {
		b = append(b, `,"stream":`...)
		b = canonjson.AppendString(b, strings.ToValidUTF8(m.Stream, "\uFFFD"))
	}
	if m.Subject != "" {
		b = append(b, `,"subject":`...)
		b = canonjson.AppendString(b, strings.ToValidUTF8(m.Subject, "\uFFFD"))
	}
	b = append(b, `,"v":`...)
	b = strconv.AppendInt(b, RecordVersion, 10)
	b = append(b, '}')
	if len(b)-len(dst) <= MaxEntrySize {
		return b
	}
	return append(dst, encodeTooLarge(m, digest(m.Body))...)
}

// encodeTooLarge returns the entry for a valid event too large for one
// entry: its data member left out and committed to by digest.
func encodeTooLarge(m Message, bodySum string) []byte {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(m.Body, &members); err == nil {
		data := members["data"]
		if data == nil {
			data = members["data_base64"]
		}
		delete(members, "data")
		delete(members, "data_base64")
		if stripped, err := json.Marshal(members); err == nil {
			if stripped, err = canonjson.Transform(stripped); err == nil {
				canonData, _ := canonjson.Transform(data)
				base := Record{V: RecordVersion, Kind: KindEvent, Stream: m.Stream, Seq: m.Seq, Subject: m.Subject,
					Stored: formatTime(m.Stored), BodySHA256: bodySum, Event: stripped,
					DataSHA256: digest(canonData), DataSize: len(canonData)}
				if entry := encode(&base); len(entry) <= MaxEntrySize {
					return entry
				}
			}
		}
	}
	return encodeInvalid(m, bodySum, fmt.Sprintf("event of %d bytes is too large for a log entry", len(m.Body)))
}

// envelopeCheck validates the CloudEvents attributes of an event from the
// top-level members of its JSON object: specversion "1.0"; id, type and
// source non-empty strings; subject, datacontenttype and dataschema strings
// (or null); time an RFC 3339 string (or null).
type envelopeCheck struct {
	spec, id, typ, source bool
	err                   error
}

// member checks one top-level member. value is canonical JSON, so it is a
// string exactly when it starts with a quote, and its escapes are the
// canonical ones: "" is the only empty string, and a string without a
// backslash holds its value as it is.
func (c *envelopeCheck) member(name, value []byte) {
	if c.err != nil {
		return
	}
	isStr := len(value) >= 2 && value[0] == '"'
	required := func(ok *bool) {
		if isStr && len(value) > 2 {
			*ok = true
			return
		}
		c.err = fmt.Errorf("%w: %s must be a non-empty string", events.ErrInvalidEnvelope, name)
	}
	switch string(name) {
	case "specversion":
		if string(value) != `"`+events.SpecVersion+`"` {
			c.err = fmt.Errorf("%w: specversion %.40s, want %q", events.ErrInvalidEnvelope, value, events.SpecVersion)
		}
		c.spec = true
	case "id":
		required(&c.id)
	case "type":
		required(&c.typ)
	case "source":
		required(&c.source)
	case "subject", "datacontenttype", "dataschema":
		if !isStr && string(value) != "null" {
			c.err = fmt.Errorf("%w: %s must be a string", events.ErrInvalidEnvelope, name)
		}
	case "time":
		if string(value) == "null" {
			return
		}
		var s string
		ok := isStr
		if ok {
			if bytes.IndexByte(value, '\\') < 0 {
				s = string(value[1 : len(value)-1])
			} else {
				ok = json.Unmarshal(value, &s) == nil
			}
		}
		if _, err := time.Parse(time.RFC3339Nano, s); !ok || err != nil {
			c.err = fmt.Errorf("%w: time %.40s is not an RFC 3339 timestamp", events.ErrInvalidEnvelope, value)
		}
	}
}

func (c *envelopeCheck) result() error {
	switch {
	case c.err != nil:
		return c.err
	case !c.spec:
		return fmt.Errorf("%w: missing specversion", events.ErrInvalidEnvelope)
	case !c.id:
		return fmt.Errorf("%w: missing id", events.ErrInvalidEnvelope)
	case !c.typ:
		return fmt.Errorf("%w: missing type", events.ErrInvalidEnvelope)
	case !c.source:
		return fmt.Errorf("%w: missing source", events.ErrInvalidEnvelope)
	}
	return nil
}

func encodeInvalid(m Message, bodySum, reason string) []byte {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	r := Record{V: RecordVersion, Kind: KindInvalid, Stream: m.Stream, Seq: m.Seq, Subject: m.Subject,
		Stored: formatTime(m.Stored), BodySHA256: bodySum, Body: m.Body, Reason: reason}
	if entry := encode(&r); len(entry) <= MaxEntrySize {
		return entry
	}
	r.Body = nil
	if entry := encode(&r); len(entry) <= MaxEntrySize {
		return entry
	}
	// Only a pathological subject gets here (NATS bounds subjects far
	// below this); keep its beginning.
	r.Reason = fmt.Sprintf("subject of %d bytes shortened; %s", len(r.Subject), r.Reason)
	r.Subject = strings.ToValidUTF8(r.Subject[:4096], "")
	return encode(&r)
}

// EncodeGap returns the entry recording that stream sequences first..last
// did not exist in the stream when the auditor reached them.
func EncodeGap(stream string, first, last uint64, reason string) []byte {
	return encode(&Record{V: RecordVersion, Kind: KindGap, Stream: stream, FirstSeq: first, Seq: last, Reason: reason})
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// encode writes r as canonical JSON: members in sorted order, the event
// already canonical, strings with RFC 8785 escaping.
func encode(r *Record) []byte {
	b := make([]byte, 0, 256+len(r.Event)+len(r.Body)*4/3)
	b = append(b, '{')
	first := true
	str := func(k, v string) {
		if v == "" {
			return
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = canonjson.AppendString(b, k)
		b = append(b, ':')
		b = canonjson.AppendString(b, strings.ToValidUTF8(v, "\uFFFD"))
	}
	num := func(k string, v uint64) {
		if v == 0 {
			return
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = canonjson.AppendString(b, k)
		b = append(b, ':')
		b = strconv.AppendUint(b, v, 10)
	}
	// Keys in sorted order.
	if len(r.Body) > 0 {
		str("body", base64.StdEncoding.EncodeToString(r.Body))
	}
	str("body_sha256", r.BodySHA256)
	str("data_sha256", r.DataSHA256)
	num("data_size", uint64(r.DataSize))
	if len(r.Event) > 0 {
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, `"event":`...)
		b = append(b, r.Event...)
	}
	num("first_seq", r.FirstSeq)
	str("kind", r.Kind)
	str("reason", r.Reason)
	num("seq", r.Seq)
	str("stored", r.Stored)
	str("stream", r.Stream)
	str("subject", r.Subject)
	num("v", uint64(r.V))
	return append(b, '}')
}
