package sim_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// fakeClock is a verifier clock the test moves.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// noCache is a collateral cache that stores nothing, so every need of a
// VCEK is a fetch.
type noCache struct{}

func (noCache) Get(context.Context, string) ([]byte, error) { return nil, collateral.ErrNotFound }
func (noCache) Put(context.Context, string, []byte, time.Time) error {
	return nil
}

// TestCollateralFetchBackoff: while AMD KDS or Intel PCS fails, it is asked
// once per backoff window however many verifications need it (each answered
// at once as unavailable, saying until when and why), the window doubles,
// Retry-After is honoured, and a success ends the backoff.
func TestCollateralFetchBackoff(t *testing.T) {
	type service int
	const (
		kdsVCEK service = iota
		kdsCRL
		pcsTCBInfo
	)
	for _, svc := range []struct {
		name    string
		svc     service
		failing func(r *http.Request) bool
		reason  string
	}{
		{"KDS VCEK", kdsVCEK, func(r *http.Request) bool { return !strings.HasSuffix(r.URL.Path, "/crl") }, evidence.ReasonSNPVCEKUnavailable},
		{"KDS CRL", kdsCRL, func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/crl") }, evidence.ReasonSNPCRLUnavailable},
		{"PCS TCB info", pcsTCBInfo, func(r *http.Request) bool { return strings.HasSuffix(r.URL.Path, "/tcb") }, evidence.ReasonTDXCollateralUnavailable},
	} {
		for _, mode := range []struct {
			name       string
			code       int
			retryAfter string
			// first and second are the backoff windows after the first
			// and the second failure.
			first, second time.Duration
			wantIn        string
		}{
			{name: "500", code: 500, first: 5 * time.Second, second: 10 * time.Second, wantIn: "500 Internal Server Error"},
			{name: "429 Retry-After", code: 429, retryAfter: "120", first: 120 * time.Second, second: 120 * time.Second, wantIn: "429 Too Many Requests (Retry-After 2m0s)"},
			{name: "503 Retry-After", code: 503, retryAfter: "30", first: 30 * time.Second, second: 30 * time.Second, wantIn: "503 Service Unavailable (Retry-After 30s)"},
		} {
			t.Run(svc.name+"/"+mode.name, func(t *testing.T) {
				auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
				if err != nil {
					t.Fatal(err)
				}
				var down atomic.Bool
				var hits atomic.Int64
				var real http.Handler = auth.KDS()
				if svc.svc == pcsTCBInfo {
					real = auth.PCS()
				}
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if !svc.failing(r) {
						real.ServeHTTP(w, r)
						return
					}
					hits.Add(1)
					if down.Load() {
						if mode.retryAfter != "" {
							w.Header().Set("Retry-After", mode.retryAfter)
						}
						http.Error(w, "unavailable", mode.code)
						return
					}
					real.ServeHTTP(w, r)
				}))
				defer srv.Close()

				clock := &fakeClock{t: time.Now()}
				cfg := evidence.Config{TestRoots: auth.TrustRoots(), Now: clock.Now}
				vmCfg := sim.VMConfig{AK: sim.AKECDSAP256}
				switch svc.svc {
				case kdsVCEK:
					cfg.KDSURL, cfg.Collateral, vmCfg.OmitVCEK = srv.URL, noCache{}, true
				case kdsCRL:
					cfg.KDSURL, cfg.SNPRevocation = srv.URL, true
				case pcsTCBInfo:
					cfg.PCSURL, cfg.TDXCollateral, vmCfg.Platform = srv.URL, true, evidence.PlatformAzureTDX
				}
				v, err := evidence.NewVerifier(cfg)
				if err != nil {
					t.Fatal(err)
				}
				vm, err := auth.NewVM(vmCfg)
				if err != nil {
					t.Fatal(err)
				}
				verify := func() *evidence.Result {
					res, err := verifyFresh(context.Background(), v, vm)
					if err != nil {
						t.Error(err)
						return nil
					}
					return res
				}
				unavailable := func(res *evidence.Result) {
					t.Helper()
					if res == nil {
						t.FailNow()
					}
					if !res.Unavailable || len(res.Failures) != 1 || res.Failures[0].Code != svc.reason || !strings.Contains(res.Failures[0].Message, mode.wantIn) {
						t.Fatalf("unavailable %v failures %v, want %s (%q)", res.Unavailable, res.Failures, svc.reason, mode.wantIn)
					}
				}
				wantHits := func(n int64) {
					t.Helper()
					if got := hits.Load(); got != n {
						t.Fatalf("failing document asked %d times, want %d", got, n)
					}
				}

				// Down: many verifications, concurrent and one after the
				// other, ask once.
				down.Store(true)
				var wg sync.WaitGroup
				results := make([]*evidence.Result, 8)
				for i := range results {
					wg.Go(func() { results[i] = verify() })
				}
				wg.Wait()
				for _, res := range results {
					unavailable(res)
				}
				start := time.Now()
				for range 4 {
					res := verify()
					unavailable(res)
					if !strings.Contains(res.Failures[0].Message, "backing off until "+clock.Now().Add(mode.first).UTC().Format(time.RFC3339)) {
						t.Fatalf("message %q does not say when the next try is", res.Failures[0].Message)
					}
				}
				if d := time.Since(start); d > time.Second {
					t.Fatalf("answers within the backoff window took %v", d)
				}
				wantHits(1)
				clock.Advance(mode.first - time.Second)
				unavailable(verify())
				wantHits(1)

				// After the window: asked again, still down; the window
				// doubles (or is Retry-After again).
				clock.Advance(time.Second)
				unavailable(verify())
				wantHits(2)
				clock.Advance(mode.second - time.Second)
				unavailable(verify())
				wantHits(2)

				// Back up: the next try after the window succeeds.
				down.Store(false)
				clock.Advance(time.Second)
				if res := verify(); res == nil || !res.Genuine {
					t.Fatalf("after recovery: %v", res.Failures)
				}
				wantHits(3)
				if svc.svc == kdsVCEK {
					// Nothing is cached, so every verification fetches:
					// the backoff was reset, the first window is short again.
					down.Store(true)
					unavailable(verify())
					wantHits(4)
					clock.Advance(mode.first)
					unavailable(verify())
					wantHits(5)
				}
			})
		}
	}
}

// TestFetchBackoffIsPerVerifier: a verifier that never failed to fetch is
// not held back by another's failures.
func TestFetchBackoffIsPerVerifier(t *testing.T) {
	auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
	if err != nil {
		t.Fatal(err)
	}
	var down atomic.Bool
	kdsH := auth.KDS()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down", http.StatusBadGateway)
			return
		}
		kdsH.ServeHTTP(w, r)
	}))
	defer srv.Close()
	vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, OmitVCEK: true})
	if err != nil {
		t.Fatal(err)
	}
	verify := func(v *evidence.Verifier) *evidence.Result {
		return mustVerifyFresh(context.Background(), t, v, vm)
	}
	cfg := evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: srv.URL, Collateral: noCache{}}
	a, _ := evidence.NewVerifier(cfg)
	b, _ := evidence.NewVerifier(cfg)
	down.Store(true)
	if res := verify(a); !res.Unavailable {
		t.Fatalf("a: %v", res.Failures)
	}
	if res := verify(a); !strings.Contains(res.Failures[0].Message, "backing off") {
		t.Fatalf("a within the window: %v", res.Failures)
	}
	down.Store(false)
	if res := verify(b); !res.Genuine {
		t.Fatalf("b: %v", res.Failures)
	}
}

// TestFetchBackoffHangingServer: a server that does not answer within the
// HTTP client's timeout or the caller's deadline is failing (backed off);
// a verification its caller cancels says nothing about the server.
func TestFetchBackoffHangingServer(t *testing.T) {
	for _, tc := range []struct {
		name          string
		clientTimeout time.Duration
		ctx           func() (context.Context, context.CancelFunc)
		wantBackoff   bool
	}{
		{name: "client timeout", clientTimeout: 100 * time.Millisecond, ctx: func() (context.Context, context.CancelFunc) {
			return context.WithCancel(context.Background())
		}, wantBackoff: true},
		{name: "caller deadline", ctx: func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, wantBackoff: true},
		{name: "caller cancels", ctx: func() (context.Context, context.CancelFunc) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(100*time.Millisecond, cancel)
			return ctx, cancel
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			auth, err := sim.NewAuthority(sim.AuthorityConfig{Hosts: 1})
			if err != nil {
				t.Fatal(err)
			}
			var hang atomic.Bool
			var hits atomic.Int64
			kdsH := auth.KDS()
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				if hang.Load() {
					<-r.Context().Done()
					return
				}
				kdsH.ServeHTTP(w, r)
			}))
			defer srv.Close()
			cfg := evidence.Config{TestRoots: auth.TrustRoots(), KDSURL: srv.URL, Collateral: noCache{}}
			if tc.clientTimeout > 0 {
				cfg.HTTPClient = &http.Client{Timeout: tc.clientTimeout}
			}
			v, err := evidence.NewVerifier(cfg)
			if err != nil {
				t.Fatal(err)
			}
			vm, err := auth.NewVM(sim.VMConfig{AK: sim.AKECDSAP256, OmitVCEK: true})
			if err != nil {
				t.Fatal(err)
			}
			verify := func(ctx context.Context) *evidence.Result {
				return mustVerifyFresh(ctx, t, v, vm)
			}
			hang.Store(true)
			ctx, cancel := tc.ctx()
			res := verify(ctx)
			cancel()
			if !res.Unavailable || res.Failures[0].Code != evidence.ReasonSNPVCEKUnavailable {
				t.Fatalf("hanging KDS: %v", res.Failures)
			}
			hang.Store(false)
			res = verify(context.Background())
			if tc.wantBackoff {
				if !res.Unavailable || !strings.Contains(res.Failures[0].Message, "backing off until") || hits.Load() != 1 {
					t.Fatalf("after the hang: %v, KDS asked %d times", res.Failures, hits.Load())
				}
				return
			}
			if !res.Genuine || hits.Load() != 2 {
				t.Fatalf("after the cancelled verification: %v, KDS asked %d times", res.Failures, hits.Load())
			}
		})
	}
}
