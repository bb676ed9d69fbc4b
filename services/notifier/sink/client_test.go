package sink_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

func devClient() *sink.Client {
	return sink.NewClient(sink.ClientOptions{AllowPrivate: true})
}

func TestClientStatusClassification(t *testing.T) {
	date := time.Now().Add(90 * time.Second).UTC().Format(http.TimeFormat)
	tests := []struct {
		status     int
		retryAfter string
		wantErr    bool
		kind       sink.Kind
		minAfter   time.Duration // RetryAfter within [minAfter, maxAfter]
		maxAfter   time.Duration
	}{
		{status: 200},
		{status: 201},
		{status: 202},
		{status: 204},
		{status: 299},
		{status: 301, wantErr: true, kind: sink.Reject},
		{status: 302, wantErr: true, kind: sink.Reject},
		{status: 400, wantErr: true, kind: sink.Reject},
		{status: 401, wantErr: true, kind: sink.Reject},
		{status: 403, wantErr: true, kind: sink.Reject},
		{status: 404, wantErr: true, kind: sink.Reject},
		{status: 408, wantErr: true, kind: sink.Retry},
		{status: 410, wantErr: true, kind: sink.Gone},
		{status: 413, wantErr: true, kind: sink.Reject},
		{status: 429, wantErr: true, kind: sink.Retry},
		{status: 429, retryAfter: "7", wantErr: true, kind: sink.Retry, minAfter: 7 * time.Second, maxAfter: 7 * time.Second},
		{status: 429, retryAfter: date, wantErr: true, kind: sink.Retry, minAfter: 80 * time.Second, maxAfter: 90 * time.Second},
		{status: 503, retryAfter: "7200", wantErr: true, kind: sink.Retry, minAfter: time.Hour, maxAfter: time.Hour},
		{status: 503, retryAfter: "soon", wantErr: true, kind: sink.Retry},
		{status: 500, retryAfter: "7", wantErr: true, kind: sink.Retry}, // Retry-After only on 429 and 503
		{status: 502, wantErr: true, kind: sink.Retry},
		{status: 504, wantErr: true, kind: sink.Retry},
	}
	c := devClient()
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%d %s", tt.status, tt.retryAfter), func(t *testing.T) {
			var redirected atomic.Int32
			mux := http.NewServeMux()
			mux.HandleFunc("/target", func(w http.ResponseWriter, r *http.Request) { redirected.Add(1) })
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				if tt.retryAfter != "" {
					w.Header().Set("Retry-After", tt.retryAfter)
				}
				if tt.status >= 300 && tt.status < 400 {
					w.Header().Set("Location", "/target")
				}
				w.WriteHeader(tt.status)
				fmt.Fprint(w, "answer")
			})
			srv := httptest.NewServer(mux)
			defer srv.Close()
			_, err := c.Do(t.Context(), http.MethodPost, srv.URL+"/hook", nil, []byte("{}"))
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("Do: %v, want success", err)
				}
				return
			}
			var e *sink.Error
			if !errors.As(err, &e) {
				t.Fatalf("Do: %v, want *sink.Error", err)
			}
			if e.Status != tt.status || e.Kind != tt.kind || sink.Classify(err) != tt.kind {
				t.Errorf("Error{Status %d, Kind %v}, Classify %v; want %d, %v", e.Status, e.Kind, sink.Classify(err), tt.status, tt.kind)
			}
			if e.RetryAfter < tt.minAfter || e.RetryAfter > tt.maxAfter {
				t.Errorf("RetryAfter %v, want in [%v, %v]", e.RetryAfter, tt.minAfter, tt.maxAfter)
			}
			if got := redirected.Load(); got != 0 {
				t.Errorf("the redirect was followed (%d requests)", got)
			}
			if tt.status >= 300 && tt.status < 400 && !errors.Is(err, sink.ErrRedirect) {
				t.Errorf("a %d is %v, want ErrRedirect", tt.status, err)
			}
		})
	}
}

func TestClientReadsAtMost64KiB(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1<<20)))
	}))
	defer srv.Close()
	r, err := devClient().Do(t.Context(), http.MethodPost, srv.URL, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Body) != sink.MaxResponseBody {
		t.Fatalf("read %d bytes of the body, want %d", len(r.Body), sink.MaxResponseBody)
	}
}

func TestClientTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	c := sink.NewClient(sink.ClientOptions{AllowPrivate: true, Timeout: 100 * time.Millisecond})
	start := time.Now()
	_, err := c.Do(t.Context(), http.MethodPost, srv.URL, nil, []byte("{}"))
	if err == nil || sink.Classify(err) != sink.Retry {
		t.Fatalf("Do against a hanging sink: %v, want a Retry error", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("took %v", d)
	}
}

func TestClientDefaultTimeout(t *testing.T) {
	// NewClient's default is 15 s; a cancelled context ends a request at once.
	ctx, cancel := context.WithCancel(t.Context())
	started := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	}))
	defer srv.Close()
	go func() { <-started; cancel() }()
	_, err := devClient().Do(ctx, http.MethodPost, srv.URL, nil, nil)
	if !errors.Is(err, context.Canceled) || sink.Classify(err) != sink.Retry {
		t.Fatalf("Do with a cancelled context: %v, want context.Canceled, Retry", err)
	}
}

// TestClientRefusesPrivate: without AllowPrivate, plain HTTP is refused, and
// a name that resolves to loopback is refused when it is dialled (the
// address checked is the one dialled, not a name looked up beforehand).
func TestClientRefusesPrivate(t *testing.T) {
	var hits atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) })
	tlsSrv := httptest.NewTLSServer(h)
	defer tlsSrv.Close()
	plain := httptest.NewServer(h)
	defer plain.Close()
	_, port, err := net.SplitHostPort(tlsSrv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}

	c := sink.NewClient(sink.ClientOptions{})
	tests := []struct{ name, url string }{
		{"plain http", plain.URL},
		{"literal loopback", tlsSrv.URL},
		{"name resolving to loopback", "https://localhost:" + port + "/hook"},
		{"IMDS", "https://169.254.169.254/metadata"},
		{"wireserver", "https://168.63.129.16/"},
		{"IPv4-mapped loopback", "https://[::ffff:127.0.0.1]:" + port + "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Do(t.Context(), http.MethodPost, tt.url, nil, []byte("{}"))
			if !errors.Is(err, sink.ErrRefused) || sink.Classify(err) != sink.Reject {
				t.Fatalf("Do(%s): %v, want ErrRefused, Reject", tt.url, err)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d requests reached the servers", n)
	}
}

// TestClientErrorsHideURL: Slack and Teams webhook URLs are credentials; no
// error shows more than their scheme and host.
func TestClientErrorsHideURL(t *testing.T) {
	const secretPath = "/services/T000/B000/XXXXsecretXXXX"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no_service", http.StatusNotFound)
	}))
	dead := srv.URL + secretPath + "?sig=topsecret"
	c := devClient()
	_, err := c.Do(t.Context(), http.MethodPost, dead, nil, nil)
	if err == nil {
		t.Fatal("no error")
	}
	srv.Close()
	_, err2 := c.Do(t.Context(), http.MethodPost, dead, nil, nil) // connection refused
	_, err3 := sink.NewClient(sink.ClientOptions{}).Do(t.Context(), http.MethodPost, strings.Replace(dead, "http:", "https:", 1), nil, nil)
	_, err4 := sink.New(sink.Spec{Protocol: "slack", URL: strings.Replace(dead, "http:", "ftp:", 1)}, c)
	for i, e := range []error{err, err2, err3, err4} {
		if e == nil {
			t.Errorf("error %d: nil", i)
			continue
		}
		if s := e.Error(); strings.Contains(s, "secret") {
			t.Errorf("error %d shows the URL: %s", i, s)
		}
	}
}
