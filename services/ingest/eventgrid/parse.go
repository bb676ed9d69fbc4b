// Package eventgrid receives Azure Event Grid deliveries: it parses the Event
// Grid and CloudEvents 1.0 schemas (single events and batches), answers the
// subscription validation and CloudEvents abuse-protection handshakes,
// authenticates the sender and hands every accepted event to a store before
// answering, so that a 200 means every event of the delivery is durable.
package eventgrid

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vigil-cc/vigil/pkg/jsonstr"
)

// Schema is the wire schema an event arrived in.
type Schema string

// Schemas.
const (
	SchemaEventGrid   Schema = "eventgrid"
	SchemaCloudEvents Schema = "cloudevents"
)

// Event types of the Event Grid subscription lifecycle.
const (
	TypeSubscriptionValidation = "Microsoft.EventGrid.SubscriptionValidationEvent"
	TypeSubscriptionDeleted    = "Microsoft.EventGrid.SubscriptionDeletedEvent"
)

// Limits bound what a delivery may contain.
type Limits struct {
	// MaxEventBytes bounds one event (default 1 MiB, Event Grid's own limit).
	MaxEventBytes int
	// MaxEvents bounds the number of events of one delivery (default 5000,
	// Event Grid's largest maxEventsPerBatch).
	MaxEvents int
	// MaxIDLength bounds the event id (default 256).
	MaxIDLength int
	// MaxClockSkew bounds how far an event's time may lie ahead of the
	// receiver's clock (default DefaultMaxClockSkew); a later time is
	// refused with ErrFutureTime (see CheckTime). Negative: not checked,
	// for re-reading events that were checked when they were received.
	MaxClockSkew time.Duration
}

// Default limits.
const (
	DefaultMaxEventBytes = 1 << 20
	DefaultMaxEvents     = 5000
	DefaultMaxIDLength   = 256
	DefaultMaxClockSkew  = 5 * time.Minute
)

func (l Limits) withDefaults() Limits {
	if l.MaxEventBytes <= 0 {
		l.MaxEventBytes = DefaultMaxEventBytes
	}
	if l.MaxEvents <= 0 {
		l.MaxEvents = DefaultMaxEvents
	}
	if l.MaxIDLength <= 0 {
		l.MaxIDLength = DefaultMaxIDLength
	}
	if l.MaxClockSkew == 0 {
		l.MaxClockSkew = DefaultMaxClockSkew
	}
	return l
}

// Event is one inbound event, in either schema.
type Event struct {
	Schema  Schema
	ID      string
	Type    string // eventType (Event Grid) or type (CloudEvents)
	Source  string // topic (Event Grid) or source (CloudEvents)
	Subject string
	Time    time.Time
	// Data is the event's data: the JSON value of "data", or the decoded
	// bytes of a CloudEvents "data_base64".
	Data json.RawMessage
	// Raw is the event exactly as received.
	Raw []byte
}

// Errors of Parse, matched with errors.Is.
var (
	// ErrMalformed: the delivery is not a valid event or batch.
	ErrMalformed = errors.New("malformed event")
	// ErrTooLarge: an event exceeds Limits.MaxEventBytes, or the batch
	// exceeds Limits.MaxEvents.
	ErrTooLarge = errors.New("event too large")
	// ErrFutureTime: an event's time lies further ahead of the receiver's
	// clock than the allowed skew. It wraps ErrMalformed.
	ErrFutureTime = fmt.Errorf("%w: time in the future", ErrMalformed)
)

// CheckTime is the bound every event time goes through before ingest
// stores it or compares it with another: nil when t lies at most skew after
// now (a zero t, no time, passes), otherwise an error wrapping
// ErrFutureTime. Without it, one event dated years ahead would make every
// genuine event until then look older than what is recorded, and so change
// nothing.
func CheckTime(t, now time.Time, skew time.Duration) error {
	if ahead := t.Sub(now); !t.IsZero() && ahead > skew {
		return fmt.Errorf("%w: %s is %s ahead of this clock, more than the allowed skew of %s",
			ErrFutureTime, t.UTC().Format(time.RFC3339Nano), ahead.Round(time.Second), skew)
	}
	return nil
}

// EventError describes why one event of a batch was refused.
type EventError struct {
	Index int    // position in the batch (0 for a single event)
	ID    string // the event's id when it could be read
	Err   error  // wraps ErrMalformed or ErrTooLarge
}

func (e *EventError) Error() string {
	if e.ID != "" {
		return fmt.Sprintf("event %d (id %q): %v", e.Index, e.ID, e.Err)
	}
	return fmt.Sprintf("event %d: %v", e.Index, e.Err)
}

func (e *EventError) Unwrap() error { return e.Err }

// Delivery is a parsed request body: the accepted events and, separately,
// the events that were refused.
type Delivery struct {
	Events   []Event
	Rejected []*EventError
}

// Err joins the rejections, or is nil when every event was accepted.
func (d Delivery) Err() error {
	if len(d.Rejected) == 0 {
		return nil
	}
	errs := make([]error, 0, min(len(d.Rejected), 10)+1)
	for i, r := range d.Rejected {
		if i == 10 {
			errs = append(errs, fmt.Errorf("and %d more refused events", len(d.Rejected)-10))
			break
		}
		errs = append(errs, r)
	}
	return errors.Join(errs...)
}

// TooLarge reports whether any refused event was refused for its size.
func (d Delivery) TooLarge() bool {
	for _, r := range d.Rejected {
		if errors.Is(r.Err, ErrTooLarge) {
			return true
		}
	}
	return false
}

// Parse reads a delivery: a JSON array of events (an Event Grid batch or a
// CloudEvents batch) or a single JSON object (a CloudEvents structured
// event, or one Event Grid event). Each element is recognised by its
// attributes: "specversion" means CloudEvents, "eventType" Event Grid.
//
// A body that is not a JSON array or object, or is not valid JSON, is an
// error wrapping ErrMalformed; so is an empty batch. A batch with more than
// MaxEvents events is an error wrapping ErrTooLarge. Otherwise individual
// bad events are reported in Delivery.Rejected and the good ones returned.
func Parse(body []byte, lim Limits) (Delivery, error) {
	lim = lim.withDefaults()
	now := time.Now()
	b := bytes.TrimSpace(body)
	if len(b) == 0 {
		return Delivery{}, fmt.Errorf("%w: empty body", ErrMalformed)
	}
	switch b[0] {
	case '{':
		var d Delivery
		ev, err := parseEvent(b, lim, now)
		if err != nil {
			d.Rejected = append(d.Rejected, &EventError{Index: 0, ID: ev.ID, Err: err})
		} else {
			d.Events = []Event{ev}
		}
		return d, nil
	case '[':
		elems, err := splitArray(b, lim.MaxEvents)
		if err != nil {
			return Delivery{}, err
		}
		if len(elems) == 0 {
			return Delivery{}, fmt.Errorf("%w: empty batch", ErrMalformed)
		}
		d := Delivery{Events: make([]Event, 0, len(elems))}
		for i, el := range elems {
			ev, err := parseEvent(el, lim, now)
			if err != nil {
				d.Rejected = append(d.Rejected, &EventError{Index: i, ID: ev.ID, Err: err})
				continue
			}
			d.Events = append(d.Events, ev)
		}
		return d, nil
	default:
		return Delivery{}, fmt.Errorf("%w: body must be a JSON object or array, starts with %q", ErrMalformed, b[0])
	}
}

// wireEvent holds the attributes of both schemas (nil: absent or null).
type wireEvent struct {
	ID      *string
	Subject *string
	Data    json.RawMessage

	// CloudEvents 1.0.
	SpecVersion *string
	Type        *string
	Source      *string
	Time        *string
	DataBase64  *string

	// Event Grid schema.
	EventType   *string
	EventTime   *string
	Topic       *string
	DataVersion *string
}

// decodeWire validates a JSON object (the grammar encoding/json accepts)
// and reads its attributes in the same single pass: the value of "data" is
// kept as it is, nested values are only validated, other attributes must
// be strings or null. As with encoding/json (FuzzDecodeWire compares
// them), keys match case-insensitively with Unicode simple folding, the
// last occurrence wins, and strings decode as jsonstr.Replace decodes them.
func decodeWire(b []byte, w *wireEvent) error {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return syntaxErr(b, i, "expected an object")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return trailing(b, i+1)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return syntaxErr(b, i, "expected a string key")
		}
		end, err := jsonstr.Scan(b, i)
		if err != nil {
			return err
		}
		key, err := unquote(b[i:end])
		if err != nil {
			return err
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return syntaxErr(b, i, "expected ':'")
		}
		i = skipSpace(b, i+1)
		vend, err := validValue(b, i, 1)
		if err != nil {
			return err
		}
		val := b[i:vend]
		name := foldName(key)
		if dst := w.field(name); dst != nil {
			if err := setString(dst, key, val); err != nil {
				return err
			}
		} else if name == "data" {
			w.Data = val
		}
		i = skipSpace(b, vend)
		if i >= len(b) {
			return syntaxErr(b, i, "unterminated object")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return trailing(b, i+1)
		default:
			return syntaxErr(b, i, "expected ',' or '}'")
		}
	}
}

func trailing(b []byte, i int) error {
	if skipSpace(b, i) != len(b) {
		return fmt.Errorf("data after the JSON object at offset %d", i)
	}
	return nil
}

// foldName maps a key to the lower-case ASCII name it matches as
// encoding/json matches keys to fields: each character to the lower-case
// ASCII letter of its simple case folding orbit when it has one ("ſ", the
// long s, to "s"; the Kelvin sign to "k"), otherwise to itself, so that
// names without ASCII letters in their orbits ("İ", dotted capital I,
// whose lower case is "i" but whose orbit has no "i") match nothing.
func foldName(key string) string {
	for i := 0; i < len(key); i++ {
		if key[i] >= utf8.RuneSelf {
			return strings.Map(foldRune, key)
		}
	}
	return strings.ToLower(key)
}

func foldRune(r rune) rune {
	if r < utf8.RuneSelf {
		return unicode.ToLower(r)
	}
	for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
		if f < utf8.RuneSelf {
			return unicode.ToLower(f)
		}
	}
	return r
}

// field returns the attribute of name, a key folded by foldName.
func (w *wireEvent) field(name string) **string {
	switch name {
	case "id":
		return &w.ID
	case "subject":
		return &w.Subject
	case "specversion":
		return &w.SpecVersion
	case "type":
		return &w.Type
	case "source":
		return &w.Source
	case "time":
		return &w.Time
	case "data_base64":
		return &w.DataBase64
	case "eventtype":
		return &w.EventType
	case "eventtime":
		return &w.EventTime
	case "topic":
		return &w.Topic
	case "dataversion":
		return &w.DataVersion
	}
	return nil
}

func setString(dst **string, key string, val []byte) error {
	switch val[0] {
	case 'n':
		*dst = nil
		return nil
	case '"':
		s, err := unquote(val)
		if err != nil {
			return err
		}
		*dst = &s
		return nil
	}
	return fmt.Errorf("attribute %q must be a string", key)
}

// unquote decodes a JSON string literal that jsonstr.Scan accepted, as
// encoding/json does (invalid UTF-8 and unpaired surrogates become U+FFFD).
func unquote(lit []byte) (string, error) {
	s, _, _, err := jsonstr.Unquote(nil, lit, 0, jsonstr.Replace)
	return string(s), err
}

// ParseEvent parses one event object in either schema.
func ParseEvent(b []byte, lim Limits) (Event, error) {
	return parseEvent(bytes.TrimSpace(b), lim.withDefaults(), time.Now())
}

func parseEvent(b []byte, lim Limits, now time.Time) (Event, error) {
	if len(b) > lim.MaxEventBytes {
		ev := Event{ID: peekID(b, lim)}
		return ev, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrTooLarge, len(b), lim.MaxEventBytes)
	}
	if len(b) == 0 || b[0] != '{' {
		return Event{}, fmt.Errorf("%w: an event must be a JSON object", ErrMalformed)
	}
	var w wireEvent
	if err := decodeWire(b, &w); err != nil {
		return Event{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	ev := Event{Raw: b, ID: str(w.ID)}
	err := checkID(ev.ID, lim)
	if err != nil {
		ev.ID = ""
		return ev, err
	}
	switch {
	case w.SpecVersion != nil:
		err = fillCloudEvent(&ev, &w)
	case w.EventType != nil:
		err = fillEventGrid(&ev, &w)
	default:
		err = fmt.Errorf("%w: neither a CloudEvent (no \"specversion\") nor an Event Grid event (no \"eventType\")", ErrMalformed)
	}
	if err == nil && lim.MaxClockSkew >= 0 {
		err = CheckTime(ev.Time, now, lim.MaxClockSkew)
	}
	return ev, err
}

func fillCloudEvent(ev *Event, w *wireEvent) error {
	ev.Schema = SchemaCloudEvents
	if *w.SpecVersion != "1.0" {
		return fmt.Errorf("%w: specversion %q is not supported, want \"1.0\"", ErrMalformed, *w.SpecVersion)
	}
	ev.Type, ev.Source, ev.Subject = str(w.Type), str(w.Source), str(w.Subject)
	if ev.Type == "" {
		return fmt.Errorf("%w: missing \"type\"", ErrMalformed)
	}
	if ev.Source == "" {
		return fmt.Errorf("%w: missing \"source\"", ErrMalformed)
	}
	if w.Time != nil {
		t, err := time.Parse(time.RFC3339Nano, *w.Time)
		if err != nil {
			return fmt.Errorf("%w: \"time\" %q is not RFC 3339", ErrMalformed, clip(*w.Time))
		}
		ev.Time = t.UTC()
	}
	switch {
	case w.DataBase64 != nil && w.Data != nil:
		return fmt.Errorf("%w: both \"data\" and \"data_base64\"", ErrMalformed)
	case w.DataBase64 != nil:
		raw, err := base64.StdEncoding.DecodeString(*w.DataBase64)
		if err != nil {
			return fmt.Errorf("%w: \"data_base64\": %v", ErrMalformed, err)
		}
		ev.Data = raw
	default:
		ev.Data = w.Data
	}
	return nil
}

func fillEventGrid(ev *Event, w *wireEvent) error {
	ev.Schema = SchemaEventGrid
	ev.Type, ev.Source = *w.EventType, str(w.Topic)
	if ev.Type == "" {
		return fmt.Errorf("%w: empty \"eventType\"", ErrMalformed)
	}
	if w.Subject == nil {
		return fmt.Errorf("%w: missing \"subject\"", ErrMalformed)
	}
	ev.Subject = *w.Subject
	if w.EventTime == nil {
		return fmt.Errorf("%w: missing \"eventTime\"", ErrMalformed)
	}
	t, err := time.Parse(time.RFC3339Nano, *w.EventTime)
	if err != nil {
		return fmt.Errorf("%w: \"eventTime\" %q is not RFC 3339", ErrMalformed, clip(*w.EventTime))
	}
	ev.Time = t.UTC()
	if w.DataVersion == nil {
		return fmt.Errorf("%w: missing \"dataVersion\"", ErrMalformed)
	}
	if w.Data == nil {
		return fmt.Errorf("%w: missing \"data\"", ErrMalformed)
	}
	ev.Data = w.Data
	return nil
}

func checkID(id string, lim Limits) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: missing \"id\"", ErrMalformed)
	case len(id) > lim.MaxIDLength:
		return fmt.Errorf("%w: \"id\" is %d bytes, the limit is %d", ErrMalformed, len(id), lim.MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] == 0x7f {
			return fmt.Errorf("%w: \"id\" contains a control character", ErrMalformed)
		}
	}
	return nil
}

// peekID reads the id of an oversized event cheaply, for the error message.
func peekID(b []byte, lim Limits) string {
	head := b[:min(len(b), 4096)]
	i := bytes.Index(head, []byte(`"id"`))
	if i < 0 {
		return ""
	}
	rest := bytes.TrimLeft(head[i+4:], " \t\r\n")
	if len(rest) == 0 || rest[0] != ':' {
		return ""
	}
	rest = bytes.TrimLeft(rest[1:], " \t\r\n")
	if len(rest) == 0 || rest[0] != '"' {
		return ""
	}
	end := bytes.IndexByte(rest[1:], '"')
	if end < 0 || end > lim.MaxIDLength {
		return ""
	}
	id := string(rest[1 : 1+end])
	if checkID(id, lim) != nil || strings.ContainsRune(id, '\\') {
		return ""
	}
	return id
}

// splitArray returns the elements of a top-level JSON array without decoding
// them. It only finds the boundaries; each element is validated when it is
// decoded.
func splitArray(b []byte, maxElems int) ([][]byte, error) {
	i := 1 // after '['
	var out [][]byte
	i = skipSpace(b, i)
	if i < len(b) && b[i] == ']' {
		if j := skipSpace(b, i+1); j != len(b) {
			return nil, fmt.Errorf("%w: data after the end of the batch", ErrMalformed)
		}
		return out, nil
	}
	for {
		i = skipSpace(b, i)
		start := i
		end, err := scanValue(b, i)
		if err != nil {
			return nil, err
		}
		if len(out) == maxElems {
			return nil, fmt.Errorf("%w: the batch has more than %d events", ErrTooLarge, maxElems)
		}
		out = append(out, b[start:end])
		i = skipSpace(b, end)
		if i >= len(b) {
			return nil, fmt.Errorf("%w: unterminated batch", ErrMalformed)
		}
		switch b[i] {
		case ',':
			i++
		case ']':
			if j := skipSpace(b, i+1); j != len(b) {
				return nil, fmt.Errorf("%w: data after the end of the batch", ErrMalformed)
			}
			return out, nil
		default:
			return nil, fmt.Errorf("%w: expected ',' or ']' at offset %d", ErrMalformed, i)
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanValue returns the offset just after the JSON value starting at i.
func scanValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, fmt.Errorf("%w: unexpected end of batch", ErrMalformed)
	}
	switch b[i] {
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1, nil
				}
			case '"':
				end, err := scanString(b, i)
				if err != nil {
					return 0, err
				}
				i = end - 1
			}
		}
		return 0, fmt.Errorf("%w: unterminated value in batch", ErrMalformed)
	case '"':
		return scanString(b, i)
	default:
		for j := i; j < len(b); j++ {
			switch b[j] {
			case ',', ']', ' ', '\t', '\n', '\r':
				if j == i {
					return 0, fmt.Errorf("%w: empty value at offset %d", ErrMalformed, i)
				}
				return j, nil
			}
		}
		return 0, fmt.Errorf("%w: unterminated batch", ErrMalformed)
	}
}

// scanString returns the offset just after the string starting at b[i]=='"'.
func scanString(b []byte, i int) (int, error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%w: unterminated string", ErrMalformed)
}

func str(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}

func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "..."
	}
	return s
}
