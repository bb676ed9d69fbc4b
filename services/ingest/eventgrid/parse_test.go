package eventgrid

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

const egEvent = `{
  "id": "4db48cba-50a2-455a-93b4-de41a3b5b7f6",
  "topic": "/subscriptions/00000000-0000-0000-0000-000000000001",
  "subject": "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1",
  "eventType": "Microsoft.Resources.ResourceWriteSuccess",
  "eventTime": "2026-11-20T18:38:04.6117357Z",
  "data": {"operationName": "Microsoft.Compute/virtualMachines/write", "authorization": {"evidence": []}},
  "dataVersion": "2",
  "metadataVersion": "1"
}`

const ceEvent = `{
  "specversion": "1.0",
  "id": "a3c0e4c5-1b1f-4b39-9d5c-0d1e2f3a4b5c",
  "source": "/subscriptions/00000000-0000-0000-0000-000000000001",
  "subject": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm1",
  "type": "Microsoft.Resources.ResourceActionSuccess",
  "time": "2026-11-20T18:39:00Z",
  "data": {"operationName": "Microsoft.Compute/virtualMachines/start/action"}
}`

func TestParseSchemas(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		schemas []Schema
	}{
		{"event grid batch", "[" + egEvent + "]", []Schema{SchemaEventGrid}},
		{"event grid single object", egEvent, []Schema{SchemaEventGrid}},
		{"cloudevents single", ceEvent, []Schema{SchemaCloudEvents}},
		{"cloudevents batch", "[" + ceEvent + "," + ceEvent + "]", []Schema{SchemaCloudEvents, SchemaCloudEvents}},
		{"mixed batch with whitespace", " [ " + egEvent + " ,\n" + ceEvent + " ] \n", []Schema{SchemaEventGrid, SchemaCloudEvents}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Rejected) != 0 {
				t.Fatalf("rejected: %v", d.Err())
			}
			if len(d.Events) != len(tt.schemas) {
				t.Fatalf("got %d events, want %d", len(d.Events), len(tt.schemas))
			}
			for i, ev := range d.Events {
				if ev.Schema != tt.schemas[i] {
					t.Errorf("event %d schema %s, want %s", i, ev.Schema, tt.schemas[i])
				}
				if ev.ID == "" || ev.Type == "" || ev.Time.IsZero() || len(ev.Data) == 0 || ev.Source == "" {
					t.Errorf("event %d incomplete: %+v", i, ev)
				}
				if !bytes.HasPrefix(ev.Raw, []byte("{")) || !bytes.HasSuffix(ev.Raw, []byte("}")) {
					t.Errorf("event %d raw bytes not the object: %q", i, ev.Raw)
				}
			}
		})
	}
}

func TestParseEventGridFields(t *testing.T) {
	d, err := Parse([]byte("["+egEvent+"]"), Limits{})
	if err != nil || len(d.Events) != 1 {
		t.Fatal(err, d.Err())
	}
	ev := d.Events[0]
	want := time.Date(2026, 11, 20, 18, 38, 4, 611735700, time.UTC)
	if !ev.Time.Equal(want) || ev.Type != "Microsoft.Resources.ResourceWriteSuccess" ||
		!strings.Contains(ev.Subject, "resourcegroups/rg1") || ev.Source != "/subscriptions/00000000-0000-0000-0000-000000000001" {
		t.Errorf("fields: %+v", ev)
	}
	if string(ev.Raw) != egEvent {
		t.Error("raw bytes differ from the input")
	}
}

func TestParseCloudEventsDataBase64(t *testing.T) {
	ev, err := ParseEvent([]byte(`{"specversion":"1.0","id":"x","source":"s","type":"t","data_base64":"eyJhIjoxfQ=="}`), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if string(ev.Data) != `{"a":1}` {
		t.Errorf("data %q", ev.Data)
	}
}

func TestParseRejections(t *testing.T) {
	big := `{"specversion":"1.0","id":"big","source":"s","type":"t","data":"` + strings.Repeat("x", 2000) + `"}`
	tests := []struct {
		name string
		body string
		lim  Limits
		// whole: the body as a whole is refused with this error
		whole error
		// rejected: events refused individually
		rejected int
		tooLarge bool
	}{
		{name: "empty", body: "  ", whole: ErrMalformed},
		{name: "not json", body: "hello", whole: ErrMalformed},
		{name: "truncated array", body: "[" + egEvent, whole: ErrMalformed},
		{name: "trailing garbage", body: "[" + egEvent + "] x", whole: ErrMalformed},
		{name: "empty batch", body: "[]", whole: ErrMalformed},
		{name: "too many events", body: "[" + ceEvent + "," + ceEvent + "," + ceEvent + "]", lim: Limits{MaxEvents: 2}, whole: ErrTooLarge},
		{name: "array of strings", body: `["a","b"]`, rejected: 2},
		{name: "missing id", body: `[{"specversion":"1.0","source":"s","type":"t"}]`, rejected: 1},
		{name: "wrong specversion", body: `{"specversion":"0.3","id":"1","source":"s","type":"t"}`, rejected: 1},
		{name: "cloudevent without source", body: `{"specversion":"1.0","id":"1","type":"t"}`, rejected: 1},
		{name: "bad time", body: `{"specversion":"1.0","id":"1","source":"s","type":"t","time":"yesterday"}`, rejected: 1},
		{name: "event grid without data", body: `[{"id":"1","subject":"s","eventType":"t","eventTime":"2026-01-01T00:00:00Z","dataVersion":"1"}]`, rejected: 1},
		{name: "event grid without eventTime", body: `[{"id":"1","subject":"s","eventType":"t","data":{},"dataVersion":"1"}]`, rejected: 1},
		{name: "neither schema", body: `[{"id":"1","foo":"bar"}]`, rejected: 1},
		{name: "id is a number", body: `[{"id":1,"specversion":"1.0","source":"s","type":"t"}]`, rejected: 1},
		{name: "one bad among good", body: "[" + ceEvent + `,{"id":"2"},` + egEvent + "]", rejected: 1},
		{name: "oversized event", body: "[" + ceEvent + "," + big + "]", lim: Limits{MaxEventBytes: 1500}, rejected: 1, tooLarge: true},
		{name: "control character in id", body: `{"specversion":"1.0","id":"a\u0001b","source":"s","type":"t"}`, rejected: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body), tt.lim)
			if tt.whole != nil {
				if !errors.Is(err, tt.whole) {
					t.Fatalf("err = %v, want %v", err, tt.whole)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Rejected) != tt.rejected {
				t.Fatalf("rejected %d (%v), want %d", len(d.Rejected), d.Err(), tt.rejected)
			}
			if d.TooLarge() != tt.tooLarge {
				t.Errorf("TooLarge = %v", d.TooLarge())
			}
			for _, r := range d.Rejected {
				if !errors.Is(r, ErrMalformed) && !errors.Is(r, ErrTooLarge) {
					t.Errorf("rejection %v wraps neither sentinel", r)
				}
			}
		})
	}
}

func TestPeekIDOfOversizedEvent(t *testing.T) {
	big := `{"id":"evt-42","specversion":"1.0","data":"` + strings.Repeat("y", 5000) + `"}`
	_, err := Parse([]byte("["+big+"]"), Limits{MaxEventBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Parse([]byte("["+big+"]"), Limits{MaxEventBytes: 1000})
	if d.Rejected[0].ID != "evt-42" || !strings.Contains(d.Err().Error(), "evt-42") {
		t.Errorf("rejection does not name the event: %v", d.Err())
	}
}

// FuzzParse: the parser never panics, never accepts an event without id,
// type and (for CloudEvents) source, and every accepted event's raw bytes
// are a slice of the input.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"[" + egEvent + "]", ceEvent, "[" + ceEvent + "," + egEvent + "]", "[]", "{}", `[{"id":"\"]"}]`,
		`[{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"!!"}]`, `[1,2,"x",null]`, `[[[[`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		d, err := Parse(body, Limits{MaxEventBytes: 4096, MaxEvents: 64})
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if len(d.Events)+len(d.Rejected) == 0 {
			t.Fatal("no events and no rejections")
		}
		for _, ev := range d.Events {
			if ev.ID == "" || ev.Type == "" {
				t.Fatalf("accepted incomplete event %+v", ev)
			}
			if ev.Schema == SchemaCloudEvents && ev.Source == "" {
				t.Fatal("accepted a CloudEvent without source")
			}
			if !bytes.Contains(body, ev.Raw) {
				t.Fatal("raw bytes are not from the input")
			}
			if !json.Valid(ev.Raw) {
				t.Fatalf("accepted invalid JSON %q", ev.Raw)
			}
		}
	})
}

// FuzzValidJSON checks the fast validator against encoding/json.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `[]`, `{"a":[1,-2.5e+3,true,false,null,"x\u00e9\n"]}`, `01`, `1.`, `"\x"`, `{"a" 1}`, `[1,]`, "\"\x01\"", `-`, `1e`, ` "a" `, `{"a":{"b":[[]]}}`, "\"\xff\""} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got := validJSON(b) == nil
		if want := json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid = %v", b, got, want)
		}
	})
}

// stdEvent is what decodeWire reads, as encoding/json reads it: the
// attributes of both schemas (nil: absent or null) and data as it is.
type stdEvent struct {
	ID          *string         `json:"id"`
	Subject     *string         `json:"subject"`
	Data        json.RawMessage `json:"data"`
	SpecVersion *string         `json:"specversion"`
	Type        *string         `json:"type"`
	Source      *string         `json:"source"`
	Time        *string         `json:"time"`
	DataBase64  *string         `json:"data_base64"`
	EventType   *string         `json:"eventType"`
	EventTime   *string         `json:"eventTime"`
	Topic       *string         `json:"topic"`
	DataVersion *string         `json:"dataVersion"`
}

// FuzzDecodeWire checks decodeWire, the single pass that reads an event's
// attributes, against encoding/json reading the same object into stdEvent:
// both accept the same objects and read the same attributes.
func FuzzDecodeWire(f *testing.F) {
	for _, s := range []string{
		egEvent, ceEvent, `{}`, `{"id":null,"ID":"x","iD":"y"}`, `{"Data":1,"data":[2]}`, `{"data":null}`,
		`{"id":"a\u0041\ud83d\ude00\ud83d"}`, "{\"id\":\"a\xffb\"}", "{\"subject\":\"\xed\xa0\x80\"}",
		"{\"\xc5\xbfource\":\"long s\",\"\u017fubject\":\"s\"}", "{\"\u212aey\":1,\"data_base64\":\"\u212a\"}", `{"\u0130d":"dotted I"}`,
		`{"id":1}`, `{"id":"x",}`, `{"id":"x"} x`, `{"type":{"a":[1,2]}}`, `{"topic":"\/x"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		b = bytes.TrimSpace(b)
		if len(b) == 0 || b[0] != '{' {
			return // parseEvent hands decodeWire objects only
		}
		var w wireEvent
		err := decodeWire(b, &w)
		var std stdEvent
		stdErr := json.Unmarshal(b, &std)
		if (err == nil) != (stdErr == nil) {
			t.Fatalf("decodeWire(%q): %v; encoding/json: %v", b, err, stdErr)
		}
		if err != nil {
			return
		}
		for _, a := range []struct {
			name      string
			got, want *string
		}{
			{"id", w.ID, std.ID}, {"subject", w.Subject, std.Subject}, {"specversion", w.SpecVersion, std.SpecVersion},
			{"type", w.Type, std.Type}, {"source", w.Source, std.Source}, {"time", w.Time, std.Time},
			{"data_base64", w.DataBase64, std.DataBase64}, {"eventType", w.EventType, std.EventType},
			{"eventTime", w.EventTime, std.EventTime}, {"topic", w.Topic, std.Topic}, {"dataVersion", w.DataVersion, std.DataVersion},
		} {
			if (a.got == nil) != (a.want == nil) || a.got != nil && *a.got != *a.want {
				t.Fatalf("decodeWire(%q): %s %s, encoding/json %s", b, a.name, show(a.got), show(a.want))
			}
		}
		if !bytes.Equal(w.Data, std.Data) || (w.Data == nil) != (std.Data == nil) {
			t.Fatalf("decodeWire(%q): data %q, encoding/json %q", b, w.Data, std.Data)
		}
	})
}

func show(s *string) string {
	if s == nil {
		return "absent"
	}
	return strconv.Quote(*s)
}

// TestFutureDatedEventRefused: an event dated beyond the receiver's clock
// plus the allowed skew is refused, in both schemas, so that it cannot make
// every genuine event until its date look superseded.
func TestFutureDatedEventRefused(t *testing.T) {
	now := time.Now().UTC()
	ce := func(at time.Time) string {
		return `{"specversion":"1.0","id":"f","source":"s","type":"t","time":"` + at.Format(time.RFC3339Nano) + `"}`
	}
	eg := func(at time.Time) string {
		return `{"id":"f","subject":"s","eventType":"t","eventTime":"` + at.Format(time.RFC3339Nano) + `","data":{},"dataVersion":"1"}`
	}
	year2126 := time.Date(2126, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name   string
		body   string
		skew   time.Duration
		refuse bool
	}{
		{"cloudevent dated 2126", ce(year2126), 0, true},
		{"event grid dated 2126", eg(year2126), 0, true},
		{"cloudevent a minute ahead, within the default skew", ce(now.Add(time.Minute)), 0, false},
		{"event grid a minute ahead, within the default skew", eg(now.Add(time.Minute)), 0, false},
		{"a minute ahead with a skew of 10 s", ce(now.Add(time.Minute)), 10 * time.Second, true},
		{"an hour in the past", eg(now.Add(-time.Hour)), 0, false},
		{"cloudevent without a time", `{"specversion":"1.0","id":"f","source":"s","type":"t"}`, 0, false},
		{"not checked (re-reading stored events)", ce(year2126), -1, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := Parse([]byte(tt.body), Limits{MaxClockSkew: tt.skew})
			if err != nil {
				t.Fatal(err)
			}
			if !tt.refuse {
				if len(d.Events) != 1 {
					t.Fatalf("refused: %v", d.Err())
				}
				return
			}
			if len(d.Events) != 0 || len(d.Rejected) != 1 {
				t.Fatalf("accepted %d events, refused %d", len(d.Events), len(d.Rejected))
			}
			err = d.Rejected[0]
			if !errors.Is(err, ErrFutureTime) || !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "ahead of this clock") {
				t.Errorf("refusal %q: want ErrFutureTime (and ErrMalformed) saying how far ahead", err)
			}
		})
	}
}
