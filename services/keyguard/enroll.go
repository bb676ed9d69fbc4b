package keyguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/enroll"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// BackendNATS names the agents' bus credentials in key events: enrolled,
// enroll_refused and revoked.
const BackendNATS = "nats"

// DefaultEnrollAddr is where the enrollment API listens unless told.
const DefaultEnrollAddr = "127.0.0.1:8085"

// EnrollConfig configures agent enrollment by attestation (pkg/enroll):
// keyguard issues a VM's agent its bus credentials against fresh evidence,
// and revokes them with the VM's grants.
type EnrollConfig struct {
	// Issuer signs the agents' user JWTs (busauth.LoadAgentIssuer): with
	// it set keyguard serves the enrollment API; nil turns it off.
	Issuer *busauth.AgentIssuer
	// Addr is the enrollment API's listener (DefaultEnrollAddr; port 0
	// picks a free port). Agents reach it before they have bus
	// credentials. OnListen, when set, is told the address.
	Addr     string
	OnListen func(addr string)
	// TTL is how long an issued JWT is valid (default
	// busauth.DefaultAgentTTL); agents renew before it ends.
	TTL time.Duration
	// SourceRate and SourceBurst bound the requests of one source address,
	// answered or refused (default 2 per second, 20 in a row); Tracked
	// bounds the sources remembered (default 65536).
	SourceRate  float64
	SourceBurst int
	Tracked     int
	// Revoker revokes agents' credentials (busauth.LoadRevoker): keyguard
	// pushes the account with its revocation list over RevokerNATS, a
	// connection as the revoker's system-account user (its credentials
	// are filled in from Revoker when empty). Without it revocations are
	// recorded in vigil-agents and refuse re-enrollment, but issued JWTs
	// stay valid until they expire.
	Revoker     *busauth.Revoker
	RevokerNATS bus.Config
}

func (c *EnrollConfig) defaults() {
	if c.Addr == "" {
		c.Addr = DefaultEnrollAddr
	}
	if c.TTL <= 0 {
		c.TTL = busauth.DefaultAgentTTL
	}
	if c.SourceRate <= 0 {
		c.SourceRate = 2
	}
	if c.SourceBurst <= 0 {
		c.SourceBurst = 20
	}
	if c.Tracked <= 0 {
		c.Tracked = 1 << 16
	}
}

// serveEnroll starts the enrollment API's listener when an issuer is
// configured; it serves the two POST paths of pkg/enroll and nothing else.
func (k *Keyguard) serveEnroll(svc *service.Service) error {
	ec := k.cfg.Enroll
	if ec.Issuer == nil {
		return nil
	}
	k.enrollSources = newLimiter(ec.SourceRate, ec.SourceBurst, ec.Tracked)
	srv, err := telemetry.ListenBare(ec.Addr)
	if err != nil {
		return fmt.Errorf("keyguard: enrollment API: %w", err)
	}
	srv.Handle("POST "+enroll.PathNonce, k.enrollHandler("nonce", k.enrollNonce))
	srv.Handle("POST "+enroll.PathEnroll, k.enrollHandler("enroll", k.enroll))
	k.log.Info("enrollment API listening", "url", srv.URL(), "ttl", ec.TTL)
	if ec.OnListen != nil {
		ec.OnListen(srv.Addr())
	}
	svc.Go("enroll", srv.Serve)
	return nil
}

// enrollHandler bounds a request by its source's rate and its size, then
// answers with h's result as JSON or its refusal.
func (k *Keyguard) enrollHandler(op string, h func(ctx context.Context, body []byte) (any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, start := r.Context(), time.Now()
		resp, err := func() (any, error) {
			if src := sourceAddr(r); !k.enrollSources.allow(src, start) {
				ref := enroll.Refuse(enroll.CodeRateLimited, "too many enrollment requests from %s; retry later", src)
				ref.RetryAfter = time.Second
				return nil, ref
			}
			body, err := readBody(w, r)
			if err != nil {
				return nil, enroll.Refuse(enroll.CodeBadRequest, "request body: %v", err)
			}
			return h(ctx, body)
		}()
		outcome := "ok"
		if err != nil {
			ref := asRefusal(err)
			outcome = ref.Code
			if ref.Code == enroll.CodeUnavailable && ref.RetryAfter == 0 {
				ref.RetryAfter = 5 * time.Second
			}
			enroll.WriteRefusal(w, ref)
		} else {
			enroll.WriteJSON(w, http.StatusOK, resp)
		}
		attrs := metric.WithAttributes(attribute.String("op", op), attribute.String("outcome", outcome))
		k.metrics.enrollments.Add(ctx, 1, attrs)
		k.metrics.enrollSeconds.Record(ctx, time.Since(start).Seconds(), attrs)
	})
}

// readBody reads r's body, at most enroll.MaxRequestSize bytes, into a
// buffer sized from the declared length when it is within the bound (an
// enrollment carries its evidence: io.ReadAll would grow and copy its
// buffer several times).
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, enroll.MaxRequestSize)
	if r.ContentLength <= 0 || r.ContentLength > enroll.MaxRequestSize {
		return io.ReadAll(body)
	}
	// The server's body reader ends after ContentLength bytes.
	buf := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, err
	}
	return buf, nil
}

// sourceAddr is the request's source: the peer's IP address (a proxy's
// headers are not believed).
func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// asRefusal turns keyguard's refusals (bus.ReplyError with a keyrelease
// code, which enrollment shares) and other errors into an enroll.Refusal.
func asRefusal(err error) *enroll.Refusal {
	var ref *enroll.Refusal
	if errors.As(err, &ref) {
		return ref
	}
	var re *bus.ReplyError
	if errors.As(err, &re) {
		code := re.Code
		switch code {
		case keyrelease.CodeSuspended, keyrelease.CodeNoGrant:
			code = enroll.CodeNotTrusted
		case keyrelease.CodeUnknownKey:
			code = enroll.CodeBadRequest
		}
		return enroll.Refuse(code, "%s", re.Message)
	}
	return enroll.Refuse(enroll.CodeUnavailable, "%v", err)
}

// enrollNonce serves enroll.PathNonce: a nonce for a VM that could enroll
// now, within the VM's rate and bound on unused nonces.
func (k *Keyguard) enrollNonce(ctx context.Context, body []byte) (any, error) {
	req, err := enroll.ParseNonceRequest(body)
	if err != nil {
		return nil, enroll.Refuse(enroll.CodeBadRequest, "%v", err)
	}
	// Only VMs ARM reported and that could enroll hold nonces: a caller
	// cannot fill the bucket with made-up VM keys.
	vmID, err := k.enrollable(ctx, req.VMKey)
	if err != nil {
		return nil, err
	}
	n, expires, err := k.issueNonce(ctx, req.VMKey, purposeEnroll, vmID, time.Now())
	if err != nil {
		return nil, err
	}
	return enroll.NonceResponse{Nonce: n, ExpiresAt: expires}, nil
}

// enroll serves enroll.PathEnroll. Every outcome of a request that used
// up a nonce is audited as a key event on backend "nats"; those refused
// before (malformed, no valid nonce), which cost nothing, are counted only,
// so that the audit records at most what the VM's nonce rate allows.
func (k *Keyguard) enroll(ctx context.Context, body []byte) (any, error) {
	start := time.Now()
	req, err := enroll.ParseRequest(body)
	if err != nil {
		return nil, enroll.Refuse(enroll.CodeBadRequest, "%v", err)
	}
	log := k.log.With("vm", req.VMKey, "nkey", req.PublicKey)
	rec, err := k.consumeNonce(ctx, req.Nonce, req.VMKey, purposeEnroll)
	if err != nil {
		log.WarnContext(ctx, "enrollment refused", "code", asRefusal(err).Code, "err", err)
		return nil, err
	}
	resp, vmID, err := k.enrollVerified(ctx, req, rec.VMID)
	action, reason := events.KeyEnrolled, ""
	if err != nil {
		ref := asRefusal(err)
		action, reason = events.KeyEnrollRefused, ref.Code+": "+ref.Message
		log.WarnContext(ctx, "enrollment refused", "code", ref.Code, "err", ref.Message)
	} else {
		reason = "agent credentials issued until " + resp.ExpiresAt.Format(time.RFC3339)
	}
	now := time.Now().UTC()
	key := events.Key{VMKey: req.VMKey, VMID: vmID, Action: action, Backend: BackendNATS, Reason: reason,
		Actor: "keyguard", CauseID: nonceKey(req.Nonce), At: now, LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
	subject := events.KeySubject(req.VMKey)
	env, perr := events.New(events.TypeKey, k.cfg.Source, subject, key)
	if perr == nil {
		env.ID = eventID(string(action), req.VMKey, req.PublicKey, nonceKey(req.Nonce))
		_, perr = k.conn.Publish(ctx, subject, env)
	}
	switch {
	case perr != nil && err == nil:
		// Every enrollment is audited: without the record, no credentials.
		log.ErrorContext(ctx, "publish enrollment event", "err", perr)
		return nil, enroll.Refuse(enroll.CodeUnavailable, "the enrollment cannot be recorded: %v", perr)
	case perr != nil:
		log.ErrorContext(ctx, "publish enrollment refusal event", "err", perr)
	}
	if err != nil {
		return nil, err
	}
	log.InfoContext(ctx, "agent enrolled", "vm_id", vmID, "expires_at", resp.ExpiresAt, "ms", key.LatencyMS)
	return resp, nil
}

// enrollVerified decides an enrollment whose nonce is used up: the
// evidence and its binding against the VM's vmId from ARM (vmID, the one
// read when the nonce was issued; read now when the nonce record has
// none), then the VM's standing and vmId again (read after verification,
// so that a revocation or a new vmId stored meanwhile wins; the nonce was
// issued only to a VM in good standing), then the JWT, recorded in
// vigil-agents before it is answered so that a revocation finds it. It
// returns the VM's vmId when known.
func (k *Keyguard) enrollVerified(ctx context.Context, req enroll.Request, vmID string) (enroll.Response, string, error) {
	if vmID == "" {
		var err error
		vmID, err = k.inventoryVMID(ctx, req.VMKey)
		switch {
		case err != nil:
			return enroll.Response{}, "", enroll.Refuse(enroll.CodeUnavailable, "%v", err)
		case vmID == "":
			return enroll.Response{}, "", enroll.Refuse(enroll.CodeUnknownVM, "ARM has not reported VM %s with its vmId yet", req.VMKey)
		}
	}
	binding := enroll.Binding(req.VMKey, req.Nonce, req.PublicKey)
	if err := k.appraise(ctx, req.VMKey, vmID, req.Nonce, binding, req.Evidence); err != nil {
		return enroll.Response{}, vmID, err
	}
	if again, err := k.enrollable(ctx, req.VMKey); err != nil || again != vmID {
		if err == nil {
			err = enroll.Refuse(enroll.CodeWrongVM, "the vmId of VM %s changed during the enrollment (%s, now %s)", req.VMKey, vmID, again)
		}
		return enroll.Response{}, vmID, err
	}
	token, expires, err := k.cfg.Enroll.Issuer.Issue(req.VMKey, req.PublicKey, k.cfg.Enroll.TTL)
	if err != nil {
		return enroll.Response{}, vmID, enroll.Refuse(enroll.CodeUnavailable, "issue credentials: %v", err)
	}
	superseded, err := k.agents.issued(ctx, req.VMKey, vmID, req.PublicKey, time.Now(), expires)
	if err != nil {
		return enroll.Response{}, vmID, enroll.Refuse(enroll.CodeUnavailable, "record credentials: %v", err)
	}
	if superseded {
		// The VM's oldest keys beyond the bound were revoked: tell the
		// servers (the next reconciliation does if this fails).
		if err := k.pushRevocations(ctx); err != nil {
			k.log.ErrorContext(ctx, "push revocations", "vm", req.VMKey, "err", err)
		}
	}
	return enroll.Response{VMKey: req.VMKey, JWT: token, ExpiresAt: expires.UTC()}, vmID, nil
}

// enrollable returns vm's vmId from ARM when the VM may enroll: ARM
// reported it with its vmId, it is not retired, and its credentials were
// not revoked since an operator last restored it. Its status is otherwise
// not asked: the enrollment's own evidence is appraised under policy, and
// a VM whose agent cannot connect is never attested trusted again.
//
// The three records (inventory, status, revocations) are read from their
// streams' leaders at once, each request in flight together with the
// others, and judged in that order.
func (k *Keyguard) enrollable(ctx context.Context, vm string) (string, error) {
	var (
		wg     sync.WaitGroup
		st     *events.VMStatus
		stErr  error
		rec    *revocationRecord
		recErr error
	)
	wg.Go(func() { st, stErr = k.status(ctx, vm) })
	wg.Go(func() { rec, recErr = k.agents.blocked(ctx, vm) })
	vmID, err := k.inventoryVMID(ctx, vm)
	wg.Wait()
	switch {
	case err != nil:
		return "", enroll.Refuse(enroll.CodeUnavailable, "%v", err)
	case vmID == "":
		return "", enroll.Refuse(enroll.CodeUnknownVM, "ARM has not reported VM %s with its vmId yet", vm)
	}
	switch {
	case stErr == nil && st.Status == events.StatusRetired:
		return vmID, enroll.Refuse(enroll.CodeNotTrusted, "VM %s is retired", vm)
	case stErr != nil && !bus.IsKeyMissing(stErr):
		return vmID, enroll.Refuse(enroll.CodeUnavailable, "read status: %v", stErr)
	}
	switch {
	case recErr != nil:
		return vmID, enroll.Refuse(enroll.CodeUnavailable, "read revocations: %v", recErr)
	case rec != nil:
		return vmID, enroll.Refuse(enroll.CodeRevoked, "the credentials of VM %s were revoked at %s (%s); an operator restores it with vigil keyguard restore",
			vm, rec.At.Format(time.RFC3339), rec.Cause)
	}
	return vmID, nil
}
