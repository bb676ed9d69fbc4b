package eventgrid

import (
	"context"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// SecretParam is the query parameter that carries the shared secret, as in
// https://ingest.example/eventgrid?secret=... in the subscription's endpoint.
const SecretParam = "secret"

// Authentication errors. ErrUnauthenticated answers 401, ErrForbidden 403.
var (
	ErrUnauthenticated = errors.New("unauthenticated")
	ErrForbidden       = errors.New("forbidden")
)

// Secrets checks the shared secret of a request in constant time. Up to two
// secrets are accepted at once, so that one can be rotated: configure the new
// one next to the old, update the subscription, then drop the old.
type Secrets struct {
	sums [][sha256.Size]byte
}

// NewSecrets accepts the non-empty values of secrets (at most two).
func NewSecrets(secrets ...string) (*Secrets, error) {
	s := &Secrets{}
	for _, v := range secrets {
		if v == "" {
			continue
		}
		if len(v) < 16 {
			return nil, errors.New("eventgrid: a webhook secret must be at least 16 characters")
		}
		s.sums = append(s.sums, sha256.Sum256([]byte(v)))
	}
	if len(s.sums) > 2 {
		return nil, errors.New("eventgrid: at most two webhook secrets (current and next)")
	}
	return s, nil
}

// Enabled reports whether any secret is configured.
func (s *Secrets) Enabled() bool { return s != nil && len(s.sums) > 0 }

// Check returns nil when the request carries one of the secrets, an error
// wrapping ErrUnauthenticated when it carries none, and ErrForbidden when it
// carries a wrong one. Every configured secret is compared, in constant time,
// whatever the outcome.
func (s *Secrets) Check(r *http.Request) error {
	if !s.Enabled() {
		return nil
	}
	got := r.URL.Query().Get(SecretParam)
	if got == "" {
		return fmt.Errorf("%w: missing %q query parameter", ErrUnauthenticated, SecretParam)
	}
	sum := sha256.Sum256([]byte(got))
	ok := 0
	for i := range s.sums {
		ok |= subtle.ConstantTimeCompare(sum[:], s.sums[i][:])
	}
	if ok != 1 {
		return fmt.Errorf("%w: wrong secret", ErrForbidden)
	}
	return nil
}

// EntraConfig configures Microsoft Entra ID bearer-token validation of
// deliveries (Event Grid's "Microsoft Entra authentication" for webhooks).
type EntraConfig struct {
	// TenantID is the directory the tokens are issued by.
	TenantID string
	// Audiences are the accepted "aud" values: the application ID URI and/or
	// the client id of the app registration protecting the webhook.
	Audiences []string
	// Issuers are the accepted "iss" values. Empty means the v1 and v2
	// issuers of TenantID.
	Issuers []string
	// AllowedClientIDs are the applications that may deliver: the token's
	// caller ("appid" in v1 tokens, "azp" in v2) must be one of them.
	// Empty means Event Grid's first-party application only
	// (EventGridAppID); sovereign clouds need theirs here. Any other
	// application of the tenant that obtains a token for the audience is
	// refused.
	AllowedClientIDs []string
	// RequiredRole, when set, is an app role of the webhook's application
	// that the token must carry in its "roles" claim as well, for example
	// AzureEventGridSecureWebhookSubscriber as Microsoft's setup script
	// creates and assigns to Event Grid's service principal.
	RequiredRole string
	// JWKSURL is where the signing keys are fetched. Empty means
	// https://login.microsoftonline.com/<tenant>/discovery/v2.0/keys.
	JWKSURL string
	// HTTPClient fetches the keys (default: a client with a 10 s timeout).
	HTTPClient *http.Client
	// RefreshInterval is how old the keys may grow before they are re-read
	// (default 1 h). Keys are fetched at most once per MinRefreshInterval
	// (default 1 min), in the background: validation with a known key never
	// waits for a fetch, and a token with an unknown key id is refused at
	// once (it triggers at most that one fetch). Only before the first key
	// set has arrived do requests wait for it.
	RefreshInterval, MinRefreshInterval time.Duration
	// Leeway tolerates clock skew on exp/nbf/iat (default 2 min).
	Leeway time.Duration
}

// EventGridAppID is the application id of Azure Event Grid's first-party
// application in the Azure public cloud: the caller ("appid"/"azp") of the
// tokens Event Grid presents to webhooks protected by Microsoft Entra ID.
const EventGridAppID = "4962773b-9cdb-44cf-a8bf-237846a00ab7"

// Enabled reports whether Entra validation is configured.
func (c EntraConfig) Enabled() bool { return c.TenantID != "" || len(c.Audiences) > 0 }

// TokenValidator validates Entra ID bearer tokens against the tenant's JWKS.
type TokenValidator struct {
	cfg    EntraConfig
	parser *jwt.Parser
	now    func() time.Time

	// keys is the last key set fetched; validation reads it without a lock.
	keys atomic.Pointer[keySet]

	mu        sync.Mutex    // guards the fields below, never held during a fetch
	attempted time.Time     // when the last fetch started
	inflight  chan struct{} // closed when the fetch in progress ends; nil when none
	fetchErr  error         // of the last fetch
}

// keySet is a fetched JWKS.
type keySet struct {
	keys      map[string]*rsa.PublicKey
	fetchedAt time.Time
}

// NewTokenValidator checks cfg; keys are fetched on first use.
func NewTokenValidator(cfg EntraConfig) (*TokenValidator, error) {
	if len(cfg.Audiences) == 0 {
		return nil, errors.New("eventgrid: Entra validation needs at least one audience")
	}
	ids := []string{EventGridAppID}
	if len(cfg.AllowedClientIDs) > 0 {
		ids = make([]string, len(cfg.AllowedClientIDs))
		for i, id := range cfg.AllowedClientIDs {
			if !isGUID(id) {
				return nil, fmt.Errorf("eventgrid: allowed client id %q is not an application id (a GUID such as %s)", id, EventGridAppID)
			}
			ids[i] = strings.ToLower(id)
		}
	}
	cfg.AllowedClientIDs = ids
	if strings.TrimSpace(cfg.RequiredRole) != cfg.RequiredRole || strings.ContainsAny(cfg.RequiredRole, ", ") {
		return nil, fmt.Errorf("eventgrid: required app role %q: a role value has no spaces or commas", cfg.RequiredRole)
	}
	if len(cfg.Issuers) == 0 {
		if cfg.TenantID == "" {
			return nil, errors.New("eventgrid: Entra validation needs a tenant id or explicit issuers")
		}
		cfg.Issuers = []string{
			"https://login.microsoftonline.com/" + cfg.TenantID + "/v2.0",
			"https://sts.windows.net/" + cfg.TenantID + "/",
		}
	}
	if cfg.JWKSURL == "" {
		if cfg.TenantID == "" {
			return nil, errors.New("eventgrid: Entra validation needs a tenant id or a JWKS URL")
		}
		cfg.JWKSURL = "https://login.microsoftonline.com/" + cfg.TenantID + "/discovery/v2.0/keys"
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = time.Hour
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = time.Minute
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 2 * time.Minute
	}
	return &TokenValidator{
		cfg: cfg,
		now: time.Now,
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{"RS256"}),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithExpirationRequired(),
		),
	}, nil
}

// Check validates the request's bearer token: an error wrapping
// ErrUnauthenticated when it is missing, malformed, badly signed or expired;
// ErrForbidden when it is genuine but not for this webhook (audience,
// issuer), not from an allowed application or without the required role.
func (v *TokenValidator) Check(r *http.Request) error {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if h == "" || !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		return fmt.Errorf("%w: missing bearer token", ErrUnauthenticated)
	}
	claims := jwt.MapClaims{}
	_, err := v.parser.ParseWithClaims(strings.TrimSpace(tok), claims, func(t *jwt.Token) (any, error) {
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errors.New("token header has no kid")
		}
		return v.key(r.Context(), kid)
	})
	if err != nil {
		return fmt.Errorf("%w: bearer token: %v", ErrUnauthenticated, err)
	}
	iss, _ := claims.GetIssuer()
	if !slices.Contains(v.cfg.Issuers, iss) {
		return fmt.Errorf("%w: token issuer %q is not accepted", ErrForbidden, iss)
	}
	aud, _ := claims.GetAudience()
	if !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(v.cfg.Audiences, a) }) {
		return fmt.Errorf("%w: token audience %v is not accepted", ErrForbidden, []string(aud))
	}
	caller, _ := claims["appid"].(string) // v1 tokens
	if caller == "" {
		caller, _ = claims["azp"].(string) // v2 tokens
	}
	if !slices.Contains(v.cfg.AllowedClientIDs, strings.ToLower(caller)) {
		return fmt.Errorf("%w: caller %q (appid/azp) is not an allowed application", ErrForbidden, caller)
	}
	if v.cfg.RequiredRole != "" && !hasRole(claims, v.cfg.RequiredRole) {
		return fmt.Errorf("%w: the token of caller %q lacks the app role %q", ErrForbidden, caller, v.cfg.RequiredRole)
	}
	return nil
}

// hasRole reports whether the token's "roles" claim (an array of strings)
// holds role.
func hasRole(claims jwt.MapClaims, role string) bool {
	roles, _ := claims["roles"].([]any)
	for _, r := range roles {
		if s, ok := r.(string); ok && s == role {
			return true
		}
	}
	return false
}

// isGUID reports whether s is a GUID in its 8-4-4-4-12 hex form.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case i == 8 || i == 13 || i == 18 || i == 23:
			if c != '-' {
				return false
			}
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		default:
			return false
		}
	}
	return true
}

// key returns the signing key kid from the key set held. A key set older
// than RefreshInterval, or one without kid, starts a refresh in the
// background (at most one per MinRefreshInterval) and is answered from what
// is held: an unknown kid fails at once. Only when no key set has been
// fetched yet does key wait for the fetch (within ctx).
func (v *TokenValidator) key(ctx context.Context, kid string) (*rsa.PublicKey, error) {
	set := v.keys.Load()
	if set == nil {
		if done := v.refresh(ctx); done != nil {
			select {
			case <-done:
			case <-ctx.Done():
				return nil, fmt.Errorf("waiting for the signing keys: %w", ctx.Err())
			}
		}
		if set = v.keys.Load(); set == nil {
			return nil, fmt.Errorf("signing keys unavailable: %w", v.lastErr())
		}
	}
	k, ok := set.keys[kid]
	if !ok || v.now().Sub(set.fetchedAt) >= v.cfg.RefreshInterval {
		v.refresh(ctx)
	}
	if !ok {
		return nil, fmt.Errorf("unknown signing key %q", kid)
	}
	return k, nil
}

// refresh starts a fetch of the key set in the background unless one is in
// progress or the last one started less than MinRefreshInterval ago. It
// returns a channel closed when the fetch in progress ends, or nil when
// none is. The fetch outlives ctx's cancellation (not its values): other
// requests wait for it.
func (v *TokenValidator) refresh(ctx context.Context) <-chan struct{} {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.inflight != nil {
		return v.inflight
	}
	now := v.now()
	if !v.attempted.IsZero() && now.Sub(v.attempted) < v.cfg.MinRefreshInterval {
		return nil
	}
	v.attempted = now
	done := make(chan struct{})
	v.inflight = done
	go func() {
		defer close(done)
		keys, err := v.fetch(context.WithoutCancel(ctx))
		if err == nil {
			v.keys.Store(&keySet{keys: keys, fetchedAt: v.now()})
		}
		v.mu.Lock()
		v.fetchErr, v.inflight = err, nil
		v.mu.Unlock()
	}()
	return done
}

func (v *TokenValidator) lastErr() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.fetchErr == nil {
		return errors.New("not fetched yet")
	}
	return v.fetchErr
}

type jwks struct {
	Keys []struct {
		Kty string `json:"kty"`
		Use string `json:"use"`
		Kid string `json:"kid"`
		N   string `json:"n"`
		E   string `json:"e"`
	} `json:"keys"`
}

func (v *TokenValidator) fetch(ctx context.Context) (map[string]*rsa.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.cfg.JWKSURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := v.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", v.cfg.JWKSURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: %s", v.cfg.JWKSURL, resp.Status)
	}
	var set jwks
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("decode %s: %w", v.cfg.JWKSURL, err)
	}
	keys := make(map[string]*rsa.PublicKey, len(set.Keys))
	for _, k := range set.Keys {
		if k.Kty != "RSA" || k.Kid == "" || (k.Use != "" && k.Use != "sig") {
			continue
		}
		n, err1 := base64.RawURLEncoding.DecodeString(k.N)
		e, err2 := base64.RawURLEncoding.DecodeString(k.E)
		if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 || len(n) < 256 {
			continue
		}
		keys[k.Kid] = &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s has no usable RSA signing keys", v.cfg.JWKSURL)
	}
	return keys, nil
}
