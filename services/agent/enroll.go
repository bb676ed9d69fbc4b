package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/enroll"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

// Enrollment earns and renews a VM agent's bus credentials by attestation
// (pkg/enroll): its nkey is made here and its seed never leaves the
// process; keyguard's answer is a user JWT for it. It is the connection's
// bus.JWTSource, so a reconnect presents the latest JWT.
type Enrollment struct {
	client enroll.Client
	kp     nkeys.KeyPair
	pub    string
	log    *slog.Logger

	mu   sync.Mutex
	cred enroll.Credential
	// renewAt is when three quarters of cred's life have passed.
	renewAt time.Time
}

// EnrollmentConfig configures an Enrollment.
type EnrollmentConfig struct {
	// URL is keyguard's enrollment API (keyguard -enroll-http).
	URL string
	// HTTP sends the requests (default a client with a 30 s timeout).
	HTTP *http.Client
	// VMKey is the VM's key; Source quotes the enrollment's binding.
	VMKey  string
	Source Source
	Logger *slog.Logger
}

// NewEnrollment makes the agent's nkey; Enroll then earns its JWT.
func NewEnrollment(cfg EnrollmentConfig) (*Enrollment, error) {
	if cfg.URL == "" || cfg.Source == nil {
		return nil, errors.New("agent: enrollment needs keyguard's URL and an evidence source")
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("agent: make the agent's nkey: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("agent: make the agent's nkey: %w", err)
	}
	hc := cfg.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Enrollment{
		client: enroll.Client{URL: cfg.URL, HTTP: hc, VMKey: cfg.VMKey, Attester: keyrelease.AttesterFunc(cfg.Source.Evidence)},
		kp:     kp,
		pub:    pub,
		log:    log.With("nkey", pub),
	}, nil
}

// PublicKey is the agent's public nkey.
func (e *Enrollment) PublicKey() string { return e.pub }

// UserJWT returns the latest JWT (bus.JWTSource).
func (e *Enrollment) UserJWT() (string, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cred.JWT == "" {
		return "", errors.New("agent: not enrolled")
	}
	return e.cred.JWT, nil
}

// ExpiresAt is when the latest JWT expires (zero before enrollment).
func (e *Enrollment) ExpiresAt() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.cred.ExpiresAt
}

// Configure makes cfg connect with the enrolled credentials and the VM's
// inbox prefix.
func (e *Enrollment) Configure(cfg *bus.Config) error {
	seed, err := e.kp.Seed()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	cfg.JWTSource, cfg.NKeySeed, cfg.UserJWT, cfg.CredsFile = e, string(seed), "", ""
	if cfg.InboxPrefix == "" {
		cfg.InboxPrefix = busauth.AgentInboxPrefix(e.client.VMKey)
	}
	return nil
}

// Enroll earns a JWT once: one nonce, one quote, one answer. A refusal is
// an *enroll.Refusal.
func (e *Enrollment) Enroll(ctx context.Context) error {
	cred, err := e.client.Enroll(ctx, e.pub)
	if err != nil {
		return err
	}
	now := time.Now()
	e.mu.Lock()
	e.cred, e.renewAt = cred, now.Add(cred.ExpiresAt.Sub(now)*3/4)
	e.mu.Unlock()
	e.log.InfoContext(ctx, "agent enrolled", "expires_at", cred.ExpiresAt)
	return nil
}

// Enrollment retry backoff bounds. While keyguard answers unknown_vm (a
// VM's agent enrolls at boot, often before ingest has its vmId from ARM,
// which takes seconds), the backoff grows to enrollRetryOnboarding only,
// for onboardingWindow after the first such answer: the VM's first
// attestation waits on the enrollment, and its grace period is short.
// Keyguard bounds each source's requests whatever the agent does.
const (
	enrollRetryMin        = 500 * time.Millisecond
	enrollRetryMax        = time.Minute
	enrollRetryOnboarding = 2 * time.Second
	onboardingWindow      = 5 * time.Minute
)

// EnrollRetrying enrolls, retrying with exponential backoff (and the
// refusal's Retry-After) until it succeeds or ctx ends. Every refusal is
// retried: a VM ARM has not reported yet is refused until ingest has (and
// retried promptly for a while: enrollRetryOnboarding), a revoked one
// until an operator restores it.
func (e *Enrollment) EnrollRetrying(ctx context.Context) error {
	wait := enrollRetryMin
	var unknownSince time.Time
	for {
		err := e.Enroll(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		d := wait/2 + rand.N(wait/2+1)
		var ref *enroll.Refusal
		if errors.As(err, &ref) && ref.RetryAfter > d {
			d = ref.RetryAfter
		}
		e.log.WarnContext(ctx, "enrollment failed; retrying", "err", err, "code", enroll.RefusalCode(err), "in", d)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
		}
		ceiling := enrollRetryMax
		if enroll.RefusalCode(err) == enroll.CodeUnknownVM {
			if unknownSince.IsZero() {
				unknownSince = time.Now()
			}
			if time.Since(unknownSince) < onboardingWindow {
				ceiling = enrollRetryOnboarding
			}
		}
		wait = min(2*wait, ceiling)
	}
}

// Renew keeps the credentials valid until ctx ends: it enrolls again once
// three quarters of the JWT's life have passed, and at once when conn has
// been disconnected for disconnectedFor (its JWT expired or was revoked).
// A reconnect then presents the new JWT.
func (e *Enrollment) Renew(ctx context.Context, conn *bus.Conn) {
	const poll = 5 * time.Second
	const disconnectedFor = 15 * time.Second
	var downSince time.Time
	for {
		e.mu.Lock()
		renewAt := e.renewAt
		e.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Until(renewAt), poll)):
		}
		now := time.Now()
		down := conn != nil && !conn.NC.IsConnected()
		switch {
		case !down:
			downSince = time.Time{}
		case downSince.IsZero():
			downSince = now
		}
		if now.Before(renewAt) && (!down || now.Sub(downSince) < disconnectedFor) {
			continue
		}
		if err := e.EnrollRetrying(ctx); err != nil {
			return
		}
		downSince = time.Time{}
	}
}

// enrolled enrolls the VM's agent and configures nc with the credentials,
// when url is set; it refuses credentials configured besides.
func enrolled(ctx context.Context, nc *bus.Config, url string, hc *http.Client, vm string, src Source, log *slog.Logger) (*Enrollment, error) {
	if url == "" {
		return nil, nil
	}
	if nc.CredsFile != "" || nc.UserJWT != "" || nc.JWTSource != nil || nc.NKeySeed != "" {
		return nil, errors.New("agent: credentials configured and enrollment asked for: choose one")
	}
	e, err := NewEnrollment(EnrollmentConfig{URL: url, HTTP: hc, VMKey: vm, Source: src, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := e.EnrollRetrying(ctx); err != nil {
		return nil, fmt.Errorf("agent: enroll: %w", err)
	}
	if err := e.Configure(nc); err != nil {
		return nil, err
	}
	return e, nil
}
