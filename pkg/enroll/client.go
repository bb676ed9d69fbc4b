package enroll

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

// Client enrolls one VM's agent with keyguard.
type Client struct {
	// URL is keyguard's enrollment endpoint, e.g. https://keyguard:8085.
	URL string
	// HTTP sends the requests (http.DefaultClient when nil). The JWT is
	// bound to a key whose seed never leaves the guest, so TLS protects
	// the exchange's availability, not the credential.
	HTTP *http.Client
	// VMKey is this VM's key (events.VMKey of its ARM resource ID).
	VMKey string
	// Attester produces the evidence bound to the enrollment.
	Attester keyrelease.Attester
	// Timeout bounds the exchange when ctx has no deadline (default 30 s).
	Timeout time.Duration
}

// Credential is an enrolled agent's user JWT and when it expires.
type Credential struct {
	JWT       string
	ExpiresAt time.Time
}

// Enroll asks keyguard for a user JWT for the public nkey userPub: it
// requests a nonce, has the attester quote over Binding(VMKey, nonce,
// userPub), sends the evidence and checks that the JWT it gets is for
// userPub, named VMKey, and not expired. A refusal is a *Refusal.
func (c *Client) Enroll(ctx context.Context, userPub string) (Credential, error) {
	if c.URL == "" || c.Attester == nil {
		return Credential{}, errors.New("enroll: client needs a URL and an Attester")
	}
	if !events.ValidVMKey(c.VMKey) {
		return Credential{}, fmt.Errorf("enroll: %q is not a VM key", c.VMKey)
	}
	if _, ok := ctx.Deadline(); !ok {
		timeout := c.Timeout
		if timeout <= 0 {
			timeout = 30 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var nr NonceResponse
	if err := c.post(ctx, PathNonce, NonceRequest{VMKey: c.VMKey}, &nr); err != nil {
		return Credential{}, fmt.Errorf("enroll: nonce: %w", err)
	}
	if len(nr.Nonce) != NonceSize {
		return Credential{}, fmt.Errorf("enroll: keyguard sent a %d-byte nonce, want %d", len(nr.Nonce), NonceSize)
	}
	bundle, err := c.Attester.Attest(ctx, nr.Nonce, Binding(c.VMKey, nr.Nonce, userPub))
	if err != nil {
		return Credential{}, fmt.Errorf("enroll: attest: %w", err)
	}
	req := Request{VMKey: c.VMKey, Nonce: nr.Nonce, PublicKey: userPub, Evidence: bytes.TrimSpace(bundle)}
	if err := req.Validate(); err != nil {
		return Credential{}, err
	}
	var resp Response
	if err := c.post(ctx, PathEnroll, req, &resp); err != nil {
		return Credential{}, fmt.Errorf("enroll: %w", err)
	}
	return checkJWT(resp, c.VMKey, userPub, time.Now())
}

// checkJWT checks that an answer's JWT is a user JWT for userPub named vm
// that has not expired at now.
func checkJWT(resp Response, vm, userPub string, now time.Time) (Credential, error) {
	uc, err := jwt.DecodeUserClaims(resp.JWT)
	if err != nil {
		return Credential{}, fmt.Errorf("enroll: keyguard's JWT: %w", err)
	}
	switch {
	case resp.VMKey != vm || uc.Name != vm:
		return Credential{}, fmt.Errorf("enroll: keyguard's JWT names %q (answer %q), not %s", uc.Name, resp.VMKey, vm)
	case uc.Subject != userPub:
		return Credential{}, fmt.Errorf("enroll: keyguard's JWT is for key %s, not %s", uc.Subject, userPub)
	case uc.Expires == 0:
		return Credential{}, errors.New("enroll: keyguard's JWT does not expire")
	case !time.Unix(uc.Expires, 0).After(now):
		return Credential{}, fmt.Errorf("enroll: keyguard's JWT expired at %s", time.Unix(uc.Expires, 0).UTC())
	}
	return Credential{JWT: resp.JWT, ExpiresAt: time.Unix(uc.Expires, 0).UTC()}, nil
}

// post sends req as JSON to path and decodes the answer into resp, or a
// refusal into a *Refusal.
func (c *Client) post(ctx context.Context, path string, req, resp any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(c.URL, "/")+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Content-Type", "application/json")
	hc := c.HTTP
	if hc == nil {
		hc = http.DefaultClient
	}
	r, err := hc.Do(hr)
	if err != nil {
		return err
	}
	defer func() { _ = r.Body.Close() }()
	b, err := io.ReadAll(io.LimitReader(r.Body, MaxResponseSize+1))
	if err != nil {
		return err
	}
	if len(b) > MaxResponseSize {
		return fmt.Errorf("answer over %d bytes", MaxResponseSize)
	}
	if r.StatusCode != http.StatusOK {
		ref := &Refusal{Status: r.StatusCode}
		if json.Unmarshal(b, ref) != nil || ref.Code == "" {
			return fmt.Errorf("HTTP %s: %s", r.Status, clip(string(b)))
		}
		if s, err := strconv.Atoi(r.Header.Get("Retry-After")); err == nil && s > 0 {
			ref.RetryAfter = time.Duration(s) * time.Second
		}
		return ref
	}
	if err := json.Unmarshal(b, resp); err != nil {
		return fmt.Errorf("answer: %w", err)
	}
	return nil
}
