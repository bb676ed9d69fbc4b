package collateral

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestFetcher: a fetch that fails, or whose answer accept refuses, makes
// the next fetch of its key back off without a request, unless the caller
// cancelled it.
func TestFetcher(t *testing.T) {
	accept := func(body []byte, hdr http.Header) ([]byte, http.Header, error) { return body, hdr, nil }
	refuse := func([]byte, http.Header) ([]byte, http.Header, error) { return nil, nil, errors.New("not genuine") }
	for _, tc := range []struct {
		name   string
		code   int // of the first answer; later ones are 200
		accept func([]byte, http.Header) ([]byte, http.Header, error)
		cancel bool // the caller cancels the first fetch
		// firstFails: the first fetch fails; backsOff: the second one is
		// refused with a *BackoffError, without a request.
		firstFails, backsOff bool
	}{
		{name: "200 accepted", code: 200, accept: accept},
		{name: "200 refused", code: 200, accept: refuse, firstFails: true, backsOff: true},
		{name: "500", code: 500, accept: accept, firstFails: true, backsOff: true},
		{name: "cancelled by the caller", code: 200, accept: accept, cancel: true, firstFails: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var hits atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if hits.Add(1) == 1 {
					w.WriteHeader(tc.code)
				}
				w.Write([]byte("answer"))
			}))
			defer srv.Close()
			f := NewFetcher(srv.Client(), time.Now)
			ctx, cancel := context.WithCancel(context.Background())
			if tc.cancel {
				cancel()
			}
			body, _, err := f.Fetch(ctx, "k", srv.URL+"/c", tc.accept)
			cancel()
			if (err != nil) != tc.firstFails || (err == nil && string(body) != "answer") {
				t.Fatalf("first fetch: %q, %v", body, err)
			}
			before := hits.Load()
			_, _, err = f.Fetch(context.Background(), "k", srv.URL+"/c", accept)
			var be *BackoffError
			if backsOff := errors.As(err, &be); backsOff != tc.backsOff || (!backsOff && err != nil) {
				t.Fatalf("second fetch: %v, want backing off %v", err, tc.backsOff)
			}
			if requested := hits.Load() > before; requested == tc.backsOff {
				t.Fatalf("second fetch requested %v, backing off %v", requested, tc.backsOff)
			}
		})
	}
}
