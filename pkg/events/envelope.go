package events

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// SpecVersion is the CloudEvents version of every Vigil envelope.
const SpecVersion = "1.0"

// ContentTypeJSON is the datacontenttype of every Vigil payload.
const ContentTypeJSON = "application/json"

// MaxEnvelopeSize bounds a single envelope on the bus. JetStream's default
// max_payload is 1 MiB; raw Azure events may be up to that size, so the bound
// leaves room for the envelope around them.
const MaxEnvelopeSize = 2 << 20

// Envelope is a CloudEvents 1.0 structured-mode JSON event.
type Envelope struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Type            string          `json:"type"`
	Source          string          `json:"source"`
	Subject         string          `json:"subject,omitempty"`
	Time            time.Time       `json:"time"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data,omitempty"`
}

// Errors returned when an envelope is not acceptable.
var (
	ErrInvalidEnvelope = errors.New("invalid cloudevent envelope")
	ErrWrongType       = errors.New("unexpected event type")
)

// New builds an envelope with a fresh random id and the current time (UTC,
// truncated to microseconds so it survives a JSON round trip unchanged).
func New(typ, source, subject string, data any) (Envelope, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return Envelope{}, fmt.Errorf("events: marshal %s payload: %w", typ, err)
	}
	return Envelope{
		SpecVersion:     SpecVersion,
		ID:              NewID(),
		Type:            typ,
		Source:          source,
		Subject:         subject,
		Time:            time.Now().UTC().Truncate(time.Microsecond),
		DataContentType: ContentTypeJSON,
		Data:            raw,
	}, nil
}

// NewID returns a random 128-bit identifier in hex.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+).
	return hex.EncodeToString(b[:])
}

// Parse decodes and validates an envelope.
func Parse(b []byte) (Envelope, error) {
	if len(b) > MaxEnvelopeSize {
		return Envelope{}, fmt.Errorf("%w: %d bytes exceeds the limit of %d", ErrInvalidEnvelope, len(b), MaxEnvelopeSize)
	}
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return Envelope{}, fmt.Errorf("%w: %w", ErrInvalidEnvelope, err)
	}
	if err := e.Validate(); err != nil {
		return Envelope{}, err
	}
	return e, nil
}

// Validate checks the required CloudEvents attributes.
func (e Envelope) Validate() error {
	switch {
	case e.SpecVersion != SpecVersion:
		return fmt.Errorf("%w: specversion %q, want %q", ErrInvalidEnvelope, e.SpecVersion, SpecVersion)
	case e.ID == "":
		return fmt.Errorf("%w: missing id", ErrInvalidEnvelope)
	case e.Type == "":
		return fmt.Errorf("%w: missing type", ErrInvalidEnvelope)
	case e.Source == "":
		return fmt.Errorf("%w: missing source", ErrInvalidEnvelope)
	}
	return nil
}

// Marshal encodes the envelope.
func (e Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// Decode unmarshals the payload into v after checking the event type.
func (e Envelope) Decode(typ string, v any) error {
	if e.Type != typ {
		return fmt.Errorf("%w: %q, want %q", ErrWrongType, e.Type, typ)
	}
	if err := json.Unmarshal(e.Data, v); err != nil {
		return fmt.Errorf("events: decode %s data: %w", typ, err)
	}
	return nil
}
