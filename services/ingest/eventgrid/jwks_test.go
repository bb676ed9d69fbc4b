package eventgrid

import (
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// waitFor polls cond until it holds, failing the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// checkAsync runs v.Check with a bearer token in the background; the
// result arrives on the channel.
func checkAsync(v *TokenValidator, token string) <-chan error {
	r := httptest.NewRequest("POST", "/eventgrid", nil)
	r.Header.Set("Authorization", "Bearer "+token)
	out := make(chan error, 1)
	go func() { out <- v.Check(r) }()
	return out
}

// result waits for a checkAsync result within timeout.
func result(t *testing.T, c <-chan error, timeout time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-c:
		return err
	case <-time.After(timeout):
		t.Fatalf("%s: no answer within %s while the JWKS fetch is in progress", what, timeout)
		return nil
	}
}

func validClaims() jwt.MapClaims {
	return entraClaims("t", jwt.MapClaims{"azp": EventGridAppID})
}

// TestEntraKnownKeyValidatedDuringSlowJWKSFetch: a JWKS fetch that an
// unauthenticated request can trigger (an unknown kid), or that an old key
// set triggers, never holds up validation: while the fetch hangs, a token
// with a known kid is validated and one with an unknown kid refused at once.
func TestEntraKnownKeyValidatedDuringSlowJWKSFetch(t *testing.T) {
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// The validator's clock moves only when a case says so: a key set
	// that ages on the wall clock would start refreshes of its own (with
	// a refresh interval short enough to age during the test, the first
	// token already started one, which made a third fetch under load).
	tests := []struct {
		name    string
		age     time.Duration // how far the clock moves before the trigger
		trigger func(j *jwksServer) (token string, wantErr error)
	}{
		{"unknown kid", time.Second, func(j *jwksServer) (string, error) {
			return j.token(t, stranger, "random-kid-0", validClaims()), ErrUnauthenticated
		}},
		{"key set older than the refresh interval", 2 * time.Hour, func(j *jwksServer) (string, error) {
			return j.token(t, j.key, j.kid, validClaims()), nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j := newJWKS(t)
			v, err := NewTokenValidator(EntraConfig{TenantID: "t", Audiences: []string{"api://vigil-ingest"}, JWKSURL: j.srv.URL,
				RefreshInterval: time.Hour, MinRefreshInterval: time.Nanosecond})
			if err != nil {
				t.Fatal(err)
			}
			clk := &clock{t: time.Now()}
			v.now = clk.Now
			valid := j.token(t, j.key, j.kid, validClaims())
			if err := result(t, checkAsync(v, valid), 10*time.Second, "first token"); err != nil {
				t.Fatalf("first token: %v", err)
			}
			release := j.block(t)
			clk.Advance(tt.age)
			token, wantErr := tt.trigger(j)
			trig := checkAsync(v, token)
			waitFor(t, 10*time.Second, "the second JWKS fetch to start", func() bool { return j.requests() == 2 })
			if err := result(t, trig, 5*time.Second, "the request that triggered the fetch"); !errors.Is(err, wantErr) {
				t.Fatalf("the request that triggered the fetch: %v, want %v", err, wantErr)
			}
			if err := result(t, checkAsync(v, valid), 5*time.Second, "a token with a known kid"); err != nil {
				t.Fatalf("a token with a known kid: %v", err)
			}
			if n := j.requests(); n != 2 {
				t.Fatalf("%d JWKS fetches, want 2: one at a time", n)
			}
			release()
		})
	}
}

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

func (c *clock) Advance(d time.Duration) { c.mu.Lock(); defer c.mu.Unlock(); c.t = c.t.Add(d) }

// TestEntraRandomKidFloodFetchesJWKSAtMostOncePerMinute: unauthenticated
// tokens with random key ids, sent in floods, cause at most one JWKS fetch
// per minute (MinRefreshInterval), and each is refused without waiting for
// it, even while it hangs.
func TestEntraRandomKidFloodFetchesJWKSAtMostOncePerMinute(t *testing.T) {
	j := newJWKS(t)
	v, err := NewTokenValidator(EntraConfig{TenantID: "t", Audiences: []string{"api://vigil-ingest"}, JWKSURL: j.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	clk := &clock{t: time.Now()}
	v.now = clk.Now
	stranger, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	valid := j.token(t, j.key, j.kid, validClaims())
	if err := result(t, checkAsync(v, valid), 10*time.Second, "first token"); err != nil {
		t.Fatal(err)
	}
	random := make([]string, 100)
	for i := range random {
		random[i] = j.token(t, stranger, fmt.Sprintf("random-kid-%d", i), validClaims())
	}
	flood := func(round string) {
		t.Helper()
		results := make([]<-chan error, len(random))
		for i, tok := range random {
			results[i] = checkAsync(v, tok)
		}
		for i := range results {
			if err := result(t, results[i], 5*time.Second, round); !errors.Is(err, ErrUnauthenticated) {
				t.Fatalf("%s: random kid %d: %v, want ErrUnauthenticated", round, i, err)
			}
		}
	}
	idle := func() bool { v.mu.Lock(); defer v.mu.Unlock(); return v.inflight == nil }

	release := j.block(t)
	steps := []struct {
		advance time.Duration // clock moves before the flood
		fetches int           // JWKS requests after it
		release bool          // let the hanging fetch finish after the flood
	}{
		{advance: 61 * time.Second, fetches: 2},                // a minute after the first fetch: one refresh, hanging
		{advance: 0, fetches: 2, release: true},                // while it hangs: no second
		{advance: 30 * time.Second, fetches: 2},                // finished, but within a minute of its start
		{advance: 31 * time.Second, fetches: 3, release: true}, // a minute later: one more
		{advance: 0, fetches: 3},
	}
	for i, st := range steps {
		round := fmt.Sprintf("flood %d", i+1)
		clk.Advance(st.advance)
		flood(round)
		waitFor(t, 10*time.Second, fmt.Sprintf("%s: %d JWKS fetches", round, st.fetches), func() bool { return j.requests() >= st.fetches })
		if err := result(t, checkAsync(v, valid), 5*time.Second, round+": a token with a known kid"); err != nil {
			t.Fatalf("%s: a token with a known kid: %v", round, err)
		}
		if n := j.requests(); n != st.fetches {
			t.Fatalf("%s: %d JWKS fetches, want %d", round, n, st.fetches)
		}
		if st.release {
			release()
			waitFor(t, 10*time.Second, round+": the fetch to finish", idle)
			release = j.block(t)
		}
	}
}
