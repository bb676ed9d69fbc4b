package auditlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/canonjson"
)

func msgOf(body []byte) Message {
	return Message{Stream: events.StreamEvents, Seq: 42, Subject: "vigil.events.vm.abc.state", Stored: time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC), Body: body}
}

func TestEncodeMessage(t *testing.T) {
	env, err := events.New(events.TypePolicy, "cli", "", events.Policy{Name: "p", Version: 2, Document: "x: <y> & \u2028"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := env.Marshal()
	huge := strings.Repeat("a", 70000)
	bigEnv, _ := events.New(events.TypePolicy, "cli", "", events.Policy{Name: "big", Document: huge})
	bigBody, _ := bigEnv.Marshal()
	hugeSubject := strings.Repeat("s", 70000)

	tests := []struct {
		name     string
		msg      Message
		kind     string
		hasEvent bool
		hasData  bool
	}{
		{name: "event", msg: msgOf(body), kind: KindEvent, hasEvent: true, hasData: true},
		{name: "not json", msg: msgOf([]byte("hello")), kind: KindInvalid},
		{name: "missing id", msg: msgOf([]byte(`{"specversion":"1.0","type":"t","source":"s"}`)), kind: KindInvalid},
		{name: "bad time", msg: msgOf([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","time":"yesterday"}`)), kind: KindInvalid},
		{name: "numeric subject", msg: msgOf([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","subject":5}`)), kind: KindInvalid},
		{name: "wrong specversion", msg: msgOf([]byte(`{"specversion":"0.3","id":"1","type":"t","source":"s"}`)), kind: KindInvalid},
		{name: "array", msg: msgOf([]byte(`[1,2]`)), kind: KindInvalid},
		{name: "extension attributes", msg: msgOf([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","ID":5,"time":null,"traceparent":"00-x","data":{"z":1}}`)), kind: KindEvent, hasEvent: true, hasData: true},
		{name: "duplicate member", msg: msgOf([]byte(`{"specversion":"1.0","id":"1","id":"2","type":"t","source":"s"}`)), kind: KindInvalid},
		{name: "too large event", msg: msgOf(bigBody), kind: KindEvent, hasEvent: true},
		{name: "too large attributes", msg: msgOf([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"` + huge + `"}`)), kind: KindInvalid},
		{name: "too large subject", msg: func() Message { m := msgOf([]byte("x")); m.Subject = hugeSubject; return m }(), kind: KindInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			entry := EncodeMessage(tt.msg)
			if len(entry) > MaxEntrySize {
				t.Fatalf("entry of %d bytes", len(entry))
			}
			canon, err := canonjson.Transform(entry)
			if err != nil || !bytes.Equal(canon, entry) {
				t.Fatalf("entry is not canonical JSON (%v):\n%.300s\n%.300s", err, entry, canon)
			}
			r, err := ParseRecord(entry)
			if err != nil {
				t.Fatalf("ParseRecord: %v", err)
			}
			sum := sha256.Sum256(tt.msg.Body)
			if r.Kind != tt.kind || r.Seq != 42 || r.BodySHA256 != "sha256:"+hex.EncodeToString(sum[:]) || r.Stored != "2026-01-02T03:04:05.000000006Z" {
				t.Fatalf("record kind %s seq %d body %s stored %s", r.Kind, r.Seq, r.BodySHA256, r.Stored)
			}
			if (len(r.Event) > 0) != tt.hasEvent {
				t.Fatalf("event present %v, want %v", len(r.Event) > 0, tt.hasEvent)
			}
			if tt.hasEvent {
				e, err := r.Envelope()
				if err != nil {
					t.Fatal(err)
				}
				if (len(e.Data) > 0) != tt.hasData {
					t.Fatalf("data present %v, want %v", len(e.Data) > 0, tt.hasData)
				}
				if !tt.hasData && (r.DataSHA256 == "" || r.DataSize < 70000) {
					t.Fatalf("left-out data not committed to: %s %d", r.DataSHA256, r.DataSize)
				}
			}
		})
	}
	// The logged event means what the producer sent.
	r, _ := ParseRecord(EncodeMessage(msgOf(body)))
	var a, b any
	_ = json.Unmarshal(body, &a)
	_ = json.Unmarshal(r.Event, &b)
	if ja, _ := json.Marshal(a); !bytes.Equal(ja, mustJSON(b)) {
		t.Fatalf("event changed:\n%s\n%s", body, r.Event)
	}
	if r.VMKey() != "abc" {
		t.Fatalf("VMKey %q", r.VMKey())
	}
}

func mustJSON(v any) []byte { b, _ := json.Marshal(v); return b }

func TestEncodeGap(t *testing.T) {
	r, err := ParseRecord(EncodeGap("S", 3, 9, "expired"))
	if err != nil || r.Kind != KindGap || r.FirstCovered() != 3 || r.Seq != 9 {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := ParseRecord(EncodeGap("S", 9, 3, "x")); err == nil {
		t.Fatal("inverted gap accepted")
	}
}

// FuzzEncodeMessage checks that any message becomes a canonical, parseable
// entry that fits a tlog-tiles bundle.
func FuzzEncodeMessage(f *testing.F) {
	f.Add([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","data":{"b":1,"a":[1.5e3]}}`), "vigil.events.vm.x.state")
	f.Add([]byte("\xff\xfe"), "bad\xffsubject")
	f.Fuzz(func(t *testing.T, body []byte, subject string) {
		m := msgOf(body)
		m.Subject = subject
		entry := EncodeMessage(m)
		if want := referenceEncode(m); !bytes.Equal(entry, want) {
			t.Fatalf("entry differs from the reference encoding:\n got %.300s\nwant %.300s", entry, want)
		}
		if len(entry) > MaxEntrySize {
			t.Fatalf("entry of %d bytes", len(entry))
		}
		if canon, err := canonjson.Transform(entry); err != nil || !bytes.Equal(canon, entry) {
			t.Fatalf("not canonical: %v", err)
		}
		if _, err := ParseRecord(entry); err != nil {
			t.Fatalf("ParseRecord: %v", err)
		}
	})
}

// FuzzParseRecord checks that arbitrary entries never panic the parser.
func FuzzParseRecord(f *testing.F) {
	f.Add(EncodeGap("S", 1, 2, "x"))
	f.Add(EncodeMessage(msgOf([]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s"}`))))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err == nil && r.Seq == 0 {
			t.Fatal("accepted a record without seq")
		}
	})
}

func TestKeyFiles(t *testing.T) {
	dir := t.TempDir()
	// Many keys, so that base64 key material with '+' is covered.
	for i := range 40 {
		s, v := dir+"/k"+strconv.Itoa(i), dir+"/k"+strconv.Itoa(i)+".pub"
		if err := EnsureKeyFiles(s, v, "o.example/log"); err != nil {
			t.Fatal(err)
		}
		if err := EnsureKeyFiles(s, v, "ignored"); err != nil {
			t.Fatalf("existing pair: %v", err)
		}
		must(t, os.Remove(v))
		if err := EnsureKeyFiles(s, v, ""); err != nil {
			t.Fatalf("deriving the verifier key: %v", err)
		}
		signer, err := LoadSigner(s)
		if err != nil {
			t.Fatal(err)
		}
		verifier, err := LoadVerifier(v)
		if err != nil {
			t.Fatal(err)
		}
		if signer.Name() != "o.example/log" || verifier.KeyHash() != signer.KeyHash() {
			t.Fatalf("pair mismatch")
		}
	}
	if err := GenerateKeyFiles(dir+"/k0", dir+"/new.pub", ""); err == nil {
		t.Fatal("overwrote an existing key")
	}
	if err := EnsureKeyFiles(dir+"/k0", dir+"/k1.pub", ""); err == nil {
		t.Fatal("accepted a verifier key of another signer")
	}
	if err := EnsureKeyFiles(dir+"/missing", dir+"/k1.pub", ""); err == nil {
		t.Fatal("accepted a verifier key without its signer")
	}
	if st, err := os.Stat(dir + "/k0"); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("signer key mode %v, %v", st.Mode(), err)
	}
}

// referenceEncode is the straightforward construction of a message's entry
// (its members decoded and checked one by one, then encoded as a Record):
// AppendMessage, which writes the common case in place, must produce
// exactly these bytes.
func referenceEncode(m Message) []byte {
	bodySum := digest(m.Body)
	if len(m.Body) > events.MaxEnvelopeSize {
		return encodeInvalid(m, bodySum, fmt.Sprintf("message of %d bytes exceeds the envelope limit of %d", len(m.Body), events.MaxEnvelopeSize))
	}
	var check refEnvelopeCheck
	canon, err := canonjson.AppendTransform(nil, m.Body, check.member)
	if err == nil {
		err = check.result()
	}
	if err != nil {
		return encodeInvalid(m, bodySum, err.Error())
	}
	r := Record{V: RecordVersion, Kind: KindEvent, Stream: m.Stream, Seq: m.Seq, Subject: m.Subject,
		Stored: formatTime(m.Stored), BodySHA256: bodySum, Event: canon}
	if entry := encode(&r); len(entry) <= MaxEntrySize {
		return entry
	}
	return encodeTooLarge(m, bodySum)
}

// refEnvelopeCheck checks the CloudEvents attributes by decoding each one.
type refEnvelopeCheck struct {
	spec, id, typ, source bool
	err                   error
}

func (c *refEnvelopeCheck) member(name, value []byte) {
	if c.err != nil {
		return
	}
	str := func() (string, bool) {
		var s string
		return s, json.Unmarshal(value, &s) == nil
	}
	required := func(ok *bool) {
		if s, isStr := str(); isStr && s != "" {
			*ok = true
			return
		}
		c.err = fmt.Errorf("%w: %s must be a non-empty string", events.ErrInvalidEnvelope, name)
	}
	switch string(name) {
	case "specversion":
		if s, _ := str(); s != events.SpecVersion {
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
		if _, ok := str(); !ok && string(value) != "null" {
			c.err = fmt.Errorf("%w: %s must be a string", events.ErrInvalidEnvelope, name)
		}
	case "time":
		if string(value) == "null" {
			return
		}
		s, ok := str()
		if _, err := time.Parse(time.RFC3339Nano, s); !ok || err != nil {
			c.err = fmt.Errorf("%w: time %.40s is not an RFC 3339 timestamp", events.ErrInvalidEnvelope, value)
		}
	}
}

func (c *refEnvelopeCheck) result() error {
	ec := envelopeCheck{spec: c.spec, id: c.id, typ: c.typ, source: c.source, err: c.err}
	return ec.result()
}

func TestAppendMessageMatchesReference(t *testing.T) {
	env, _ := events.New(events.TypePolicy, "cli", "", events.Policy{Name: "p", Version: 2, Document: "x: <y> & \u2028 \"q\" \\"})
	body, _ := env.Marshal()
	big := strings.Repeat("a", 70000)
	bodies := [][]byte{
		body,
		[]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","time":"2026-01-02T03:04:05Z","subject":null,"data":{"b":[1e2,-0,0.5],"a":"\u00e9\n"}}`),
		[]byte(`{"specversion":"1.0","id":"\u0031","type":"t","source":"s","time":"2026-01-02T03:04:05\u002b01:00"}`),
		[]byte(`{"specversion":"1.0","id":"","type":"t","source":"s"}`),
		[]byte(`{"specversion":"1\u002e0","id":"1","type":"t","source":"s"}`),
		[]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","time":"2026-13-02T03:04:05Z"}`),
		[]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","datacontenttype":7}`),
		[]byte(`{"specversion":"1.0","id":"1","type":"t","source":"s","data":"` + big + `"}`),
		[]byte(`not json`),
	}
	msgs := []Message{}
	for _, b := range bodies {
		m := msgOf(b)
		msgs = append(msgs, m)
		m.Subject, m.Stream, m.Seq, m.Stored = "bad\xffsubject \"x\"", "", 0, time.Time{}
		msgs = append(msgs, m)
		m.Stored = time.Date(2026, 5, 6, 7, 8, 9, 0, time.FixedZone("x", 3600))
		msgs = append(msgs, m)
	}
	for i, m := range msgs {
		want := referenceEncode(m)
		if got := EncodeMessage(m); !bytes.Equal(got, want) {
			t.Fatalf("message %d:\n got %.400s\nwant %.400s", i, got, want)
		}
		prefix := []byte("prefix")
		if got := AppendMessage(prefix, m); !bytes.Equal(got[:6], prefix) || !bytes.Equal(got[6:], want) {
			t.Fatalf("message %d appended:\n got %.400s\nwant %.400s", i, got, want)
		}
	}
}
