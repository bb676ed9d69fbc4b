package sink_test

import (
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// The example published with the Standard Webhooks spec (its reference
// libraries' TestWebhookSign: standard-webhooks/standard-webhooks,
// libraries/go/webhook_test.go).
const (
	specSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	specID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	specTimestamp = 1614265330
	specBody      = `{"test": 2432232314}`
	specSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
)

func TestSignStandardWebhooksVector(t *testing.T) {
	got, err := sink.Sign([]string{specSecret}, specID, time.Unix(specTimestamp, 0), []byte(specBody))
	if err != nil {
		t.Fatal(err)
	}
	if got != specSignature {
		t.Fatalf("Sign = %s, want %s", got, specSignature)
	}
	h := signedHeader(specID, specTimestamp, specSignature)
	if err := sink.Verify([]string{specSecret}, h, []byte(specBody), time.Unix(specTimestamp, 0), time.Minute); err != nil {
		t.Fatalf("Verify of the spec's example: %v", err)
	}
}

func TestSignRotation(t *testing.T) {
	a, b := sink.NewWebhookSecret(), sink.NewWebhookSecret()
	ts := time.Unix(1700000000, 0)
	got, err := sink.Sign([]string{a, b}, "msg_1", ts, []byte("{}"))
	if err != nil {
		t.Fatal(err)
	}
	sigs := strings.Fields(got)
	if len(sigs) != 2 {
		t.Fatalf("Sign with two secrets = %q, want two signatures", got)
	}
	for i, s := range []string{a, b} {
		one, _ := sink.Sign([]string{s}, "msg_1", ts, []byte("{}"))
		if sigs[i] != one {
			t.Errorf("signature %d = %s, want %s", i, sigs[i], one)
		}
		// A receiver that knows only one of the secrets accepts the delivery.
		if err := sink.Verify([]string{s}, signedHeader("msg_1", ts.Unix(), got), []byte("{}"), ts, time.Minute); err != nil {
			t.Errorf("Verify with secret %d alone: %v", i, err)
		}
	}
	if _, err := sink.Sign([]string{a, b, sink.NewWebhookSecret()}, "msg_1", ts, nil); err == nil {
		t.Error("Sign with three secrets: no error")
	}
}

func signedHeader(id string, ts int64, sig string) http.Header {
	h := http.Header{}
	h.Set("webhook-id", id)
	h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	h.Set("webhook-signature", sig)
	return h
}

func TestVerify(t *testing.T) {
	now := time.Unix(specTimestamp, 0)
	other := sink.NewWebhookSecret()
	tests := []struct {
		name    string
		secrets []string
		header  func(h http.Header)
		body    string
		now     time.Time
		want    error // nil: accepted
	}{
		{name: "valid", secrets: []string{specSecret}},
		{name: "second of two secrets", secrets: []string{other, specSecret}},
		{name: "valid among others", header: func(h http.Header) {
			h.Set("webhook-signature", "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= "+specSignature)
		}},
		{name: "missing id", header: func(h http.Header) { h.Del("webhook-id") }, want: sink.ErrNoSignatureHeaders},
		{name: "missing timestamp", header: func(h http.Header) { h.Del("webhook-timestamp") }, want: sink.ErrNoSignatureHeaders},
		{name: "missing signature", header: func(h http.Header) { h.Del("webhook-signature") }, want: sink.ErrNoSignatureHeaders},
		{name: "timestamp not a number", header: func(h http.Header) { h.Set("webhook-timestamp", "16142653a0") }, want: sink.ErrBadTimestamp},
		{name: "negative timestamp", header: func(h http.Header) { h.Set("webhook-timestamp", "-1614265330") }, want: sink.ErrBadTimestamp},
		{name: "too old", now: now.Add(6 * time.Minute), want: sink.ErrTimestampTolerance},
		{name: "too new", now: now.Add(-6 * time.Minute), want: sink.ErrTimestampTolerance},
		{name: "tampered body", body: `{"test": 2432232315}`, want: sink.ErrNoMatchingSig},
		{name: "other id", header: func(h http.Header) { h.Set("webhook-id", "msg_other") }, want: sink.ErrNoMatchingSig},
		{name: "wrong secret", secrets: []string{other}, want: sink.ErrNoMatchingSig},
		{name: "v2 scheme ignored", header: func(h http.Header) { h.Set("webhook-signature", strings.Replace(specSignature, "v1,", "v2,", 1)) }, want: sink.ErrNoMatchingSig},
		{name: "truncated signature", header: func(h http.Header) { h.Set("webhook-signature", specSignature[:20]) }, want: sink.ErrNoMatchingSig},
		{name: "secret without prefix", secrets: []string{strings.TrimPrefix(specSecret, "whsec_")}, want: sink.ErrBadSecret},
		{name: "no secrets", secrets: []string{}, want: sink.ErrBadSecret},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := signedHeader(specID, specTimestamp, specSignature)
			if tt.header != nil {
				tt.header(h)
			}
			secrets := tt.secrets
			if secrets == nil {
				secrets = []string{specSecret}
			}
			body := tt.body
			if body == "" {
				body = specBody
			}
			at := tt.now
			if at.IsZero() {
				at = now
			}
			err := sink.Verify(secrets, h, []byte(body), at, 5*time.Minute)
			switch {
			case tt.want == nil && err != nil:
				t.Fatalf("Verify: %v, want success", err)
			case tt.want != nil && !errors.Is(err, tt.want):
				t.Fatalf("Verify: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestParseWebhookSecret(t *testing.T) {
	tests := []struct {
		secret string
		ok     bool
	}{
		{specSecret, true},
		{sink.NewWebhookSecret(), true},
		{"MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", false},
		{"whsec_", false},
		{"whsec_c2hvcnQ=", false}, // 5 bytes
		{"whsec_!!!!notbase64!!!!", false},
	}
	for _, tt := range tests {
		_, err := sink.ParseWebhookSecret(tt.secret)
		if (err == nil) != tt.ok {
			t.Errorf("ParseWebhookSecret(%.10s...) error %v, want ok=%v", tt.secret, err, tt.ok)
		}
		if err != nil && len(tt.secret) > 8 && strings.Contains(err.Error(), tt.secret[6:]) {
			t.Errorf("the error shows the secret: %v", err)
		}
	}
}

// FuzzVerify: Verify parses headers from anyone on the network. It must not
// panic, and it must accept only a genuine signature of the body.
func FuzzVerify(f *testing.F) {
	f.Add(specID, strconv.Itoa(specTimestamp), specSignature, []byte(specBody))
	f.Add("x", "1614265330", "v1,", []byte{})
	f.Add("x", "99999999999999999999", "v1,AAAA v1a,BBBB ,,, v1", []byte("{}"))
	f.Add("", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, id, ts, sig string, body []byte) {
		h := http.Header{}
		h.Set("webhook-id", id)
		h.Set("webhook-timestamp", ts)
		h.Set("webhook-signature", sig)
		now := time.Unix(specTimestamp, 0)
		err := sink.Verify([]string{specSecret}, h, body, now, 5*time.Minute)
		if err != nil {
			return
		}
		n, perr := strconv.ParseInt(h.Get("webhook-timestamp"), 10, 64)
		if perr != nil {
			t.Fatalf("accepted timestamp %q", ts)
		}
		want, _ := sink.Sign([]string{specSecret}, h.Get("webhook-id"), time.Unix(n, 0), body)
		for _, f := range strings.Fields(h.Get("webhook-signature")) {
			if f == want {
				return
			}
		}
		t.Fatalf("accepted %q for id %q ts %q body %q; the genuine signature is %s", sig, id, ts, body, want)
	})
}
