package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/service"
)

// Service is the service name in logs, traces and the NATS connection.
const Service = "agent"

// Source produces vigil.evidence/v1 bundles. The bundle's nonce field is
// nonce and its TPM quote carries extraData as qualifying data: for a
// challenge extraData is evidence.ChallengeBinding of the challenge nonce;
// for a key release it binds keyguard's nonce to an ephemeral key
// (keyrelease.Binding). A caller's bytes are never quoted as they are. It
// has the shape of keyrelease.Attester.
type Source interface {
	Evidence(ctx context.Context, nonce, extraData []byte) ([]byte, error)
}

// Config configures the in-guest agent.
type Config struct {
	// Options are the bus connection (the agent's own credentials),
	// operational listener, health, telemetry, logger and readiness hook
	// every service shares. The agent uses core NATS alone: CoreOnly is
	// set by Run. Ready is called once the agent serves challenges.
	service.Options
	// ResourceID and VMID identify the VM. When ResourceID is empty they
	// come from the instance metadata service.
	ResourceID, VMID string
	// IMDS is the instance metadata service (default NewIMDS("")).
	IMDS *IMDS
	// Source produces the evidence; default the Azure vTPM
	// (NewAzureTPM with TPMPath and EventLogPath).
	Source Source
	// TPMPath and EventLogPath configure the default source.
	TPMPath, EventLogPath string
	// ChallengeTimeout bounds the work on one challenge (default 10 s); a
	// shorter deadline in the challenge wins.
	ChallengeTimeout time.Duration
	// EnrollURL is keyguard's enrollment API: when set, the agent earns
	// its bus credentials by attestation (pkg/enroll) and renews them,
	// instead of connecting with configured ones. EnrollHTTP sends its
	// requests (default: a client with a 30 s timeout).
	EnrollURL  string
	EnrollHTTP *http.Client
	// RatePerSecond and Burst bound the challenges answered (default 5/s,
	// burst 10): more are refused with "rate_limited", so a flood of
	// challenges cannot monopolise the TPM.
	RatePerSecond float64
	Burst         int
}

// Agent answers challenges for one VM.
type Agent struct {
	vm      string
	src     Source
	timeout time.Duration
	limit   *rate.Limiter
	log     *slog.Logger
	m       *agentMetrics
}

type agentMetrics struct {
	challenges metric.Int64Counter
	duration   metric.Float64Histogram
}

func newAgentMetrics(mp metric.MeterProvider) *agentMetrics {
	m := mp.Meter("github.com/vigil-cc/vigil/services/agent")
	a := &agentMetrics{}
	a.challenges, _ = m.Int64Counter("vigil.agent.challenges", metric.WithDescription("Challenges by outcome (ok, refused, error)"))
	a.duration, _ = m.Float64Histogram("vigil.agent.evidence_duration", metric.WithUnit("s"), metric.WithDescription("Time to collect evidence for a challenge"),
		metric.WithExplicitBucketBoundaries(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
	return a
}

// Run serves the VM's challenge subject until ctx ends.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("service", Service)
	if cfg.IMDS == nil {
		cfg.IMDS = NewIMDS("")
	}
	if cfg.ResourceID == "" {
		c, err := cfg.IMDS.Compute(ctx)
		if err != nil {
			return fmt.Errorf("agent: learn the VM's identity (or configure the resource ID): %w", err)
		}
		cfg.ResourceID, cfg.VMID = c.ResourceID, c.VMID
	}
	vm := events.VMKey(cfg.ResourceID)
	log = log.With("vm", vm, "resource_id", cfg.ResourceID, "vm_id", cfg.VMID)
	src := cfg.Source
	if src == nil {
		open := cfg.TPMPath
		if open == "" {
			open = DefaultTPMPath
		}
		tpm := NewAzureTPM(AzureTPMConfig{Open: openDevice(open), IMDS: cfg.IMDS, EventLogPath: cfg.EventLogPath, VMKey: vm, Logger: log})
		defer func() { _ = tpm.Close() }()
		src = tpm
	}
	cfg.CoreOnly = true
	if cfg.NATS.Name == "" {
		cfg.NATS.Name = "vigil-agent " + vm
	}
	// The one inbox prefix the agent's permissions let it hear.
	if cfg.NATS.InboxPrefix == "" {
		cfg.NATS.InboxPrefix = busauth.AgentInboxPrefix(vm)
	}
	cfg.Logger = log
	en, err := enrolled(ctx, &cfg.NATS, cfg.EnrollURL, cfg.EnrollHTTP, vm, src, log)
	if err != nil {
		return err
	}
	svc, err := service.Start(ctx, Service, cfg.Options)
	if err != nil {
		return err
	}
	if en != nil {
		svc.Go("renew", func(ctx context.Context) error { en.Renew(ctx, svc.Conn); return nil })
	}
	a := New(vm, src, cfg.ChallengeTimeout, cfg.RatePerSecond, cfg.Burst, log, svc.MeterProvider)
	if _, err := a.Serve(svc.Context(), svc.Conn); err != nil {
		svc.Stop()
		return errors.Join(err, svc.Wait())
	}
	log.Info("agent serving challenges", "subject", events.ChallengeSubject(vm))
	svc.MarkReady()
	return svc.Wait()
}

// New returns an agent for VM key vm that answers with src. Zero values
// take the defaults of Config.
func New(vm string, src Source, timeout time.Duration, perSecond float64, burst int, log *slog.Logger, mp metric.MeterProvider) *Agent {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	if perSecond <= 0 {
		perSecond = 5
	}
	if burst <= 0 {
		burst = 10
	}
	if log == nil {
		log = slog.Default()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	return &Agent{vm: vm, src: src, timeout: timeout, limit: rate.NewLimiter(rate.Limit(perSecond), burst), log: log, m: newAgentMetrics(mp)}
}

// VMKey is the VM key the agent answers for.
func (a *Agent) VMKey() string { return a.vm }

// Serve subscribes to the VM's challenge subject, and nothing else, until
// ctx ends. In operator mode it answers only challenges whose reply
// subject lies under the attest-worker's inbox, the one principal that
// challenges agents.
func (a *Agent) Serve(ctx context.Context, conn *bus.Conn) (unsubscribe func() error, err error) {
	opts := []bus.ServeOption{bus.WithServeConcurrency(4)}
	if conn.OperatorMode() {
		opts = append(opts, bus.WithReplyCheck(challengerReply))
	}
	sub, err := conn.Serve(ctx, events.ChallengeSubject(a.vm), "", a.Answer, opts...)
	if err != nil {
		return nil, err
	}
	return sub.Unsubscribe, nil
}

// challengerReply reports whether the agent, in operator mode, answers a
// challenge whose reply subject is reply: only under the attest-worker's
// inbox prefix.
func challengerReply(_, reply string) bool {
	return busauth.ReplyAllowed(busauth.InboxPrefix(busauth.AttestWorker), reply)
}

// Answer handles one challenge request and returns the evidence bundle.
func (a *Agent) Answer(ctx context.Context, data []byte) ([]byte, error) {
	out, err := a.answer(ctx, data)
	outcome := "ok"
	var re *bus.ReplyError
	switch {
	case errors.As(err, &re):
		outcome = re.Code
	case err != nil:
		outcome = "error"
	}
	a.m.challenges.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", outcome)))
	if err != nil {
		a.log.WarnContext(ctx, "challenge not answered", "outcome", outcome, "err", err)
	}
	return out, err
}

func (a *Agent) answer(ctx context.Context, data []byte) ([]byte, error) {
	var ch events.Challenge
	if err := json.Unmarshal(data, &ch); err != nil {
		return nil, &bus.ReplyError{Code: "bad_request", Message: "challenge is not JSON: " + err.Error()}
	}
	if ch.VMKey != a.vm {
		return nil, &bus.ReplyError{Code: "wrong_vm", Message: fmt.Sprintf("this agent answers for %s, not %q", a.vm, ch.VMKey)}
	}
	if len(ch.Nonce) < 8 || len(ch.Nonce) > evidence.MaxNonceSize {
		return nil, &bus.ReplyError{Code: "bad_request", Message: fmt.Sprintf("nonce of %d bytes: want 8..%d", len(ch.Nonce), evidence.MaxNonceSize)}
	}
	now := time.Now()
	deadline := now.Add(a.timeout)
	if !ch.Deadline.IsZero() {
		if !ch.Deadline.After(now) {
			return nil, &bus.ReplyError{Code: "expired", Message: "the challenge's deadline has passed"}
		}
		if ch.Deadline.Before(deadline) {
			deadline = ch.Deadline
		}
	}
	if !a.limit.Allow() {
		return nil, &bus.ReplyError{Code: "rate_limited", Message: "too many challenges"}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	start := time.Now()
	// The quote covers the challenge's labelled digest, never the nonce as
	// it is: whoever may send a challenge chooses the nonce, and a raw
	// nonce could be another protocol's binding (a key release's).
	out, err := a.src.Evidence(ctx, ch.Nonce, evidence.ChallengeBinding(ch.Nonce))
	a.m.duration.Record(ctx, time.Since(start).Seconds())
	if err != nil {
		if ctx.Err() != nil {
			return nil, &bus.ReplyError{Code: "timeout", Message: err.Error()}
		}
		return nil, &bus.ReplyError{Code: "evidence_failed", Message: err.Error()}
	}
	return out, nil
}
