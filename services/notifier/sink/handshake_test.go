package sink_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func TestHandshake(t *testing.T) {
	const origin = "vigil.example.com"
	tests := []struct {
		name    string
		status  int
		allowed []string
		ok      bool
	}{
		{name: "origin", status: 200, allowed: []string{origin}, ok: true},
		{name: "origin other case", status: 200, allowed: []string{"Vigil.Example.com"}, ok: true},
		{name: "star", status: 204, allowed: []string{"*"}, ok: true},
		{name: "no header", status: 200},
		{name: "other origin", status: 200, allowed: []string{"evil.example.com"}},
		{name: "list is no consent", status: 200, allowed: []string{"evil.example.com, " + origin}},
		{name: "method not allowed", status: 405, allowed: []string{origin}},
		{name: "server error", status: 500, allowed: []string{"*"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gotMethod, gotOrigin string
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotMethod, gotOrigin = r.Method, r.Header.Get("WebHook-Request-Origin")
				for _, a := range tt.allowed {
					w.Header().Add("WebHook-Allowed-Origin", a)
				}
				w.WriteHeader(tt.status)
			}))
			defer srv.Close()
			err := sink.Handshake(t.Context(), devClient(), srv.URL+"/hook", origin)
			if gotMethod != http.MethodOptions || gotOrigin != origin {
				t.Errorf("request %s with WebHook-Request-Origin %q, want OPTIONS with %q", gotMethod, gotOrigin, origin)
			}
			if tt.ok && err != nil {
				t.Fatalf("Handshake: %v", err)
			}
			if !tt.ok && !errors.Is(err, sink.ErrNoConsent) {
				t.Fatalf("Handshake: %v, want ErrNoConsent", err)
			}
		})
	}
}

func TestHandshakeRefusesPrivate(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WebHook-Allowed-Origin", "*")
	}))
	defer srv.Close()
	err := sink.Handshake(t.Context(), sink.NewClient(sink.ClientOptions{}), srv.URL, "vigil.example.com")
	if !errors.Is(err, sink.ErrRefused) {
		t.Fatalf("Handshake to loopback without AllowPrivate: %v, want ErrRefused", err)
	}
}
