package eventgrid

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	secretA = "0123456789abcdef-current"
	secretB = "fedcba9876543210-next"
)

type memStore struct {
	mu   sync.Mutex
	evs  []Event
	fail error
}

func (s *memStore) store(_ context.Context, evs []Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	s.evs = append(s.evs, evs...)
	return nil
}

func (s *memStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.evs)
}

func newTestHandler(t *testing.T, mod func(*HandlerConfig)) (*httptest.Server, *memStore) {
	t.Helper()
	st := &memStore{}
	secrets, err := NewSecrets(secretA, secretB)
	if err != nil {
		t.Fatal(err)
	}
	cfg := HandlerConfig{Store: st.store, Secrets: secrets, Limits: Limits{MaxEventBytes: 4096}, MaxBodyBytes: 64 << 10}
	if mod != nil {
		mod(&cfg)
	}
	h, err := NewHandler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv, st
}

func do(t *testing.T, method, url, body string, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestWebhookStatusCodes(t *testing.T) {
	srv, st := newTestHandler(t, nil)
	good := "?secret=" + secretA
	tests := []struct {
		name   string
		method string
		query  string
		body   string
		status int
		stored int
	}{
		{"event grid batch", "POST", good, "[" + egEvent + "," + egEvent + "]", 200, 2},
		{"cloudevent with next secret", "POST", "?secret=" + secretB, ceEvent, 200, 1},
		{"no secret", "POST", "", ceEvent, 401, 0},
		{"wrong secret", "POST", "?secret=not-the-secret-at-all", ceEvent, 403, 0},
		{"malformed json", "POST", good, "[{", 400, 0},
		{"one malformed event stores the rest", "POST", good, "[" + ceEvent + `,{"id":"x"}]`, 400, 1},
		{"oversized event", "POST", good, `[{"specversion":"1.0","id":"b","source":"s","type":"t","data":"` + strings.Repeat("z", 5000) + `"}]`, 413, 0},
		{"oversized body", "POST", good, strings.Repeat(" ", 70<<10) + ceEvent, 413, 0},
		{"future-dated event", "POST", good, `{"specversion":"1.0","id":"f","source":"s","type":"t","time":"2126-01-01T00:00:00Z"}`, 400, 0},
		{"method", "GET", good, "", 405, 0},
	}
	total := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, tt.method, srv.URL+tt.query, tt.body, nil)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			total += tt.stored
			if st.count() != total {
				t.Fatalf("stored %d events in total, want %d", st.count(), total)
			}
			if tt.status != 200 && !strings.Contains(body, `"error"`) {
				t.Errorf("error answer without a JSON error: %q", body)
			}
		})
	}
}

func TestWebhookStorageUnavailable(t *testing.T) {
	srv, st := newTestHandler(t, nil)
	st.fail = errors.New("jetstream: no responders")
	resp, _ := do(t, "POST", srv.URL+"?secret="+secretA, ceEvent, nil)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	st.fail = ErrTooLarge
	resp, _ = do(t, "POST", srv.URL+"?secret="+secretA, ceEvent, nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d for an event too large to store", resp.StatusCode)
	}
}

func TestSubscriptionValidationHandshake(t *testing.T) {
	srv, st := newTestHandler(t, nil)
	body := `[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/x","subject":"",
	  "data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/s/validate?id=1"},
	  "eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2026-11-20T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]`
	resp, got := do(t, "POST", srv.URL+"?secret="+secretA, body, map[string]string{"aeg-event-type": "SubscriptionValidation"})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, got)
	}
	var vr ValidationResponse
	if err := json.Unmarshal([]byte(got), &vr); err != nil || vr.ValidationResponse != "512d38b6-c7b8-40c8-89fe-f46f9e9622b6" {
		t.Fatalf("answer %q", got)
	}
	if st.count() != 0 {
		t.Error("the validation event was stored")
	}
	// Without the secret the handshake is refused.
	if resp, _ := do(t, "POST", srv.URL, body, nil); resp.StatusCode != 401 {
		t.Errorf("unauthenticated handshake: %d", resp.StatusCode)
	}
}

func TestAbuseProtectionHandshake(t *testing.T) {
	srv, _ := newTestHandler(t, nil)
	resp, _ := do(t, "OPTIONS", srv.URL+"?secret="+secretA, "", map[string]string{
		"WebHook-Request-Origin": "eventgrid.azure.net", "WebHook-Request-Rate": "120"})
	if resp.StatusCode != 200 || resp.Header.Get("WebHook-Allowed-Origin") != "eventgrid.azure.net" ||
		resp.Header.Get("WebHook-Allowed-Rate") == "" {
		t.Fatalf("status %d headers %v", resp.StatusCode, resp.Header)
	}
	if resp, _ := do(t, "OPTIONS", srv.URL+"?secret=wrong-secret-value-xx", "", map[string]string{"WebHook-Request-Origin": "eventgrid.azure.net"}); resp.StatusCode != 403 {
		t.Errorf("wrong secret: %d", resp.StatusCode)
	}
	srv2, _ := newTestHandler(t, func(c *HandlerConfig) { c.AllowedOrigins = []string{"eventgrid.azure.net"} })
	if resp, _ := do(t, "OPTIONS", srv2.URL+"?secret="+secretA, "", map[string]string{"WebHook-Request-Origin": "evil.example"}); resp.StatusCode != 403 {
		t.Errorf("foreign origin: %d", resp.StatusCode)
	}
}

func TestSecrets(t *testing.T) {
	if _, err := NewSecrets("short"); err == nil {
		t.Error("a short secret was accepted")
	}
	if _, err := NewSecrets(secretA, secretB, secretA+"x"); err == nil {
		t.Error("three secrets were accepted")
	}
	s, _ := NewSecrets()
	if s.Enabled() {
		t.Error("no secrets but enabled")
	}
	r := httptest.NewRequest("POST", "/eventgrid", nil)
	if err := s.Check(r); err != nil {
		t.Errorf("disabled secrets refused: %v", err)
	}
}

// --- Entra ID ---

type jwksServer struct {
	srv     *httptest.Server
	key     *rsa.PrivateKey
	kid     string
	mu      sync.Mutex
	fetches int           // requests received
	hold    chan struct{} // when set, requests wait until it is closed
}

// block makes JWKS requests wait until the returned release is called (at
// the latest when the test ends, before the server closes).
func (j *jwksServer) block(t *testing.T) (release func()) {
	t.Helper()
	hold := make(chan struct{})
	j.mu.Lock()
	j.hold = hold
	j.mu.Unlock()
	var once sync.Once
	release = func() {
		once.Do(func() {
			j.mu.Lock()
			j.hold = nil
			j.mu.Unlock()
			close(hold)
		})
	}
	t.Cleanup(release)
	return release
}

func (j *jwksServer) requests() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.fetches
}

func newJWKS(t *testing.T) *jwksServer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	j := &jwksServer{key: key, kid: "test-key-1"}
	j.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		j.mu.Lock()
		j.fetches++
		hold := j.hold
		j.mu.Unlock()
		if hold != nil {
			select {
			case <-hold:
			case <-r.Context().Done():
				return
			}
		}
		e := big.NewInt(int64(key.E)).Bytes()
		_ = json.NewEncoder(w).Encode(map[string]any{"keys": []map[string]string{{
			"kty": "RSA", "use": "sig", "kid": j.kid,
			"n": base64.RawURLEncoding.EncodeToString(key.N.Bytes()),
			"e": base64.RawURLEncoding.EncodeToString(e),
		}}})
	}))
	t.Cleanup(j.srv.Close)
	return j
}

func (j *jwksServer) token(t *testing.T, key *rsa.PrivateKey, kid string, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(jwt.SigningMethodRS256, claims)
	tok.Header["kid"] = kid
	s, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestEntraBearerTokens(t *testing.T) {
	const tenant = "11111111-2222-3333-4444-555555555555"
	const egApp = "4962773b-9cdb-44cf-a8bf-237846a00ab7"
	j := newJWKS(t)
	v, err := NewTokenValidator(EntraConfig{TenantID: tenant, Audiences: []string{"api://vigil-ingest"},
		AllowedClientIDs: []string{egApp}, JWKSURL: j.srv.URL, MinRefreshInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	srv, st := newTestHandler(t, func(c *HandlerConfig) { c.Secrets = nil; c.Tokens = v })
	now := time.Now()
	valid := jwt.MapClaims{
		"iss": "https://login.microsoftonline.com/" + tenant + "/v2.0", "aud": "api://vigil-ingest",
		"azp": egApp, "iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	with := func(k string, val any) jwt.MapClaims {
		c := jwt.MapClaims{}
		for a, b := range valid {
			c[a] = b
		}
		if val == nil {
			delete(c, k)
		} else {
			c[k] = val
		}
		return c
	}
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name   string
		auth   string
		status int
	}{
		{"valid", "Bearer " + j.token(t, j.key, j.kid, valid), 200},
		{"v1 issuer", "Bearer " + j.token(t, j.key, j.kid, with("iss", "https://sts.windows.net/"+tenant+"/")), 200},
		{"missing", "", 401},
		{"not bearer", "Basic abc", 401},
		{"garbage", "Bearer not.a.token", 401},
		{"expired", "Bearer " + j.token(t, j.key, j.kid, with("exp", now.Add(-time.Hour).Unix())), 401},
		{"no expiry", "Bearer " + j.token(t, j.key, j.kid, with("exp", nil)), 401},
		{"signed by another key", "Bearer " + j.token(t, other, j.kid, valid), 401},
		{"unknown kid", "Bearer " + j.token(t, other, "other-kid", valid), 401},
		{"wrong audience", "Bearer " + j.token(t, j.key, j.kid, with("aud", "api://something-else")), 403},
		{"wrong tenant", "Bearer " + j.token(t, j.key, j.kid, with("iss", "https://login.microsoftonline.com/other/v2.0")), 403},
		{"wrong caller", "Bearer " + j.token(t, j.key, j.kid, with("azp", "00000000-0000-0000-0000-000000000000")), 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := st.count()
			resp, body := do(t, "POST", srv.URL, ceEvent, map[string]string{"Authorization": tt.auth})
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
			if (tt.status == 200) != (st.count() == before+1) {
				t.Fatal("stored or not stored contrary to the answer")
			}
		})
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.fetches != 1 {
		t.Errorf("JWKS fetched %d times; an unknown kid may refresh at most every MinRefreshInterval", j.fetches)
	}
}

func TestEntraAlgorithmConfusion(t *testing.T) {
	j := newJWKS(t)
	v, err := NewTokenValidator(EntraConfig{TenantID: "t", Audiences: []string{"a"}, JWKSURL: j.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"iss": "https://sts.windows.net/t/", "aud": "a", "exp": time.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = j.kid
	s, _ := tok.SignedString([]byte("secret"))
	r := httptest.NewRequest("POST", "/", nil)
	r.Header.Set("Authorization", "Bearer "+s)
	if err := v.Check(r); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("HS256 token: %v", err)
	}
}

// entraClaims are the claims of a token of tenant for the audience
// "api://vigil-ingest", issued now, with extra claims (a nil value removes
// one).
func entraClaims(tenant string, extra jwt.MapClaims) jwt.MapClaims {
	now := time.Now()
	c := jwt.MapClaims{
		"iss": "https://login.microsoftonline.com/" + tenant + "/v2.0", "aud": "api://vigil-ingest",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

// TestEntraTokenOfAnotherAppOfTheTenantRefusedByDefault: with Entra ID
// validation and no applications configured, only Azure Event Grid's
// first-party application may deliver; another application of the same
// tenant with a genuine token for the webhook's audience is refused.
func TestEntraTokenOfAnotherAppOfTheTenantRefusedByDefault(t *testing.T) {
	const tenant = "11111111-2222-3333-4444-555555555555"
	const eventGrid = "4962773b-9cdb-44cf-a8bf-237846a00ab7"
	const otherApp = "9b2f0c1e-5d6a-4e7b-8c9d-0a1b2c3d4e5f"
	j := newJWKS(t)
	v, err := NewTokenValidator(EntraConfig{TenantID: tenant, Audiences: []string{"api://vigil-ingest"}, JWKSURL: j.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	srv, _ := newTestHandler(t, func(c *HandlerConfig) { c.Secrets = nil; c.Tokens = v })
	v1 := "https://sts.windows.net/" + tenant + "/"
	tests := []struct {
		name   string
		claims jwt.MapClaims
		status int
	}{
		{"event grid, v2 token (azp)", entraClaims(tenant, jwt.MapClaims{"azp": eventGrid}), 200},
		{"event grid, v1 token (appid)", entraClaims(tenant, jwt.MapClaims{"iss": v1, "appid": eventGrid}), 200},
		{"another app of the tenant, v2 token", entraClaims(tenant, jwt.MapClaims{"azp": otherApp}), 403},
		{"another app of the tenant, v1 token", entraClaims(tenant, jwt.MapClaims{"iss": v1, "appid": otherApp}), 403},
		{"no caller in the token", entraClaims(tenant, nil), 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			auth := "Bearer " + j.token(t, j.key, j.kid, tt.claims)
			if resp, body := do(t, "POST", srv.URL, ceEvent, map[string]string{"Authorization": auth}); resp.StatusCode != tt.status {
				t.Fatalf("status %d (%s), want %d", resp.StatusCode, body, tt.status)
			}
		})
	}
}

// TestEntraConfiguredCallersAndAppRole: operators may name the
// applications allowed to deliver (replacing Event Grid's, e.g. in a
// sovereign cloud) and require an app role on top.
func TestEntraConfiguredCallersAndAppRole(t *testing.T) {
	const tenant = "11111111-2222-3333-4444-555555555555"
	const otherApp = "9b2f0c1e-5d6a-4e7b-8c9d-0a1b2c3d4e5f"
	const role = "AzureEventGridSecureWebhookSubscriber"
	j := newJWKS(t)
	tests := []struct {
		name   string
		cfg    EntraConfig
		claims jwt.MapClaims
		status int
	}{
		{"listed app", EntraConfig{AllowedClientIDs: []string{strings.ToUpper(otherApp)}},
			entraClaims(tenant, jwt.MapClaims{"azp": otherApp}), 200},
		{"event grid when not listed", EntraConfig{AllowedClientIDs: []string{otherApp}},
			entraClaims(tenant, jwt.MapClaims{"azp": EventGridAppID}), 403},
		{"event grid with the role", EntraConfig{RequiredRole: role},
			entraClaims(tenant, jwt.MapClaims{"azp": EventGridAppID, "roles": []string{"Other", role}}), 200},
		{"event grid without the role", EntraConfig{RequiredRole: role},
			entraClaims(tenant, jwt.MapClaims{"azp": EventGridAppID, "roles": []string{"Other"}}), 403},
		{"event grid with roles not an array", EntraConfig{RequiredRole: role},
			entraClaims(tenant, jwt.MapClaims{"azp": EventGridAppID, "roles": role}), 403},
		{"another app with the role", EntraConfig{RequiredRole: role},
			entraClaims(tenant, jwt.MapClaims{"azp": otherApp, "roles": []string{role}}), 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := tt.cfg
			cfg.TenantID, cfg.Audiences, cfg.JWKSURL = tenant, []string{"api://vigil-ingest"}, j.srv.URL
			v, err := NewTokenValidator(cfg)
			if err != nil {
				t.Fatal(err)
			}
			r := httptest.NewRequest("POST", "/", nil)
			r.Header.Set("Authorization", "Bearer "+j.token(t, j.key, j.kid, tt.claims))
			err = v.Check(r)
			status := http.StatusOK
			if errors.Is(err, ErrForbidden) {
				status = http.StatusForbidden
			} else if err != nil {
				t.Fatalf("Check: %v, want nil or ErrForbidden", err)
			}
			if status != tt.status {
				t.Fatalf("Check: %v, want status %d", err, tt.status)
			}
		})
	}
}

func TestEntraConfigErrors(t *testing.T) {
	for _, cfg := range []EntraConfig{
		{AllowedClientIDs: []string{"event-grid"}},
		{AllowedClientIDs: []string{EventGridAppID + "0"}},
		{RequiredRole: "A,B"},
		{RequiredRole: "Webhook Subscriber"},
	} {
		cfg.TenantID, cfg.Audiences = "t", []string{"a"}
		if _, err := NewTokenValidator(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
