package keyrelease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// Requester sends a JSON request and decodes the JSON reply; *bus.Conn
// implements it. A refusal must come back as *bus.ReplyError.
type Requester interface {
	Request(ctx context.Context, subject string, req, resp any) error
}

// Attester produces a vigil.evidence/v1 bundle (JSON) for this VM whose
// "nonce" field is nonce and whose TPM quote carries extraData (not the
// nonce itself) as its qualifying data.
type Attester interface {
	Attest(ctx context.Context, nonce, extraData []byte) ([]byte, error)
}

// AttesterFunc adapts a function to Attester.
type AttesterFunc func(ctx context.Context, nonce, extraData []byte) ([]byte, error)

// Attest calls f.
func (f AttesterFunc) Attest(ctx context.Context, nonce, extraData []byte) ([]byte, error) {
	return f(ctx, nonce, extraData)
}

// Client performs key releases for one VM.
type Client struct {
	// Requester reaches keyguard (a *bus.Conn).
	Requester Requester
	// VMKey is this VM's key (events.VMKey of its ARM resource ID).
	VMKey string
	// Attester produces evidence bound to the release.
	Attester Attester
	// Suite seals the answer; DefaultSuite when zero.
	Suite Suite
	// Timeout bounds each request when ctx has no deadline (default 30 s).
	Timeout time.Duration
}

// Released is a released secret.
type Released struct {
	KeyName    string
	Version    uint64
	Secret     []byte
	ReleasedAt time.Time
}

// Release asks keyguard for the secret keyName: it requests a nonce,
// generates an ephemeral key pair, has the attester quote over their
// binding, sends the evidence and opens the sealed answer. A refusal is a
// *bus.ReplyError (see RefusalCode).
func (c *Client) Release(ctx context.Context, keyName string) (*Released, error) {
	if c.Requester == nil || c.Attester == nil {
		return nil, errors.New("keyrelease: client needs a Requester and an Attester")
	}
	if !events.ValidVMKey(c.VMKey) {
		return nil, fmt.Errorf("keyrelease: %q is not a VM key", c.VMKey)
	}
	if !ValidKeyName(keyName) {
		return nil, fmt.Errorf("keyrelease: %q is not a valid key name", keyName)
	}
	suite := c.Suite
	if suite == (Suite{}) {
		suite = DefaultSuite
	}
	priv, pub, err := suite.GenerateKey()
	if err != nil {
		return nil, err
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}

	var nr NonceResponse
	if err := c.Requester.Request(ctx, NonceSubject(c.VMKey), NonceRequest{VMKey: c.VMKey}, &nr); err != nil {
		return nil, fmt.Errorf("keyrelease: nonce: %w", err)
	}
	if len(nr.Nonce) != NonceSize {
		return nil, fmt.Errorf("keyrelease: keyguard sent a %d-byte nonce, want %d", len(nr.Nonce), NonceSize)
	}
	binding := Binding(nr.Nonce, suite, pub)
	bundle, err := c.Attester.Attest(ctx, nr.Nonce, binding)
	if err != nil {
		return nil, fmt.Errorf("keyrelease: attest: %w", err)
	}
	req := ReleaseRequest{
		VMKey:     c.VMKey,
		KeyName:   keyName,
		Nonce:     nr.Nonce,
		Suite:     suite,
		PublicKey: pub,
		Evidence:  bytes.TrimSpace(bundle),
	}
	if err := req.Validate(); err != nil {
		return nil, err
	}
	var resp ReleaseResponse
	if err := c.Requester.Request(ctx, ReleaseSubject(c.VMKey), req, &resp); err != nil {
		return nil, fmt.Errorf("keyrelease: release %s: %w", keyName, err)
	}
	if resp.VMKey != c.VMKey || resp.KeyName != keyName || resp.Suite != suite {
		return nil, fmt.Errorf("keyrelease: answer is for vm %q key %q suite %s, asked for %q %q %s",
			resp.VMKey, resp.KeyName, resp.Suite, c.VMKey, keyName, suite)
	}
	secret, err := suite.Open(priv, Info(c.VMKey, keyName, nr.Nonce), resp.Sealed)
	if err != nil {
		return nil, err
	}
	return &Released{KeyName: keyName, Version: resp.Version, Secret: secret, ReleasedAt: resp.ReleasedAt}, nil
}

// RefusalCode returns the refusal code of an error returned by Release
// (one of the Code* constants), or "" when keyguard did not refuse.
func RefusalCode(err error) string {
	var re *bus.ReplyError
	if errors.As(err, &re) {
		return re.Code
	}
	return ""
}
