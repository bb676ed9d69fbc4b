package keyguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/policyfeed"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// EvidenceConfig configures how release evidence is verified.
type EvidenceConfig struct {
	// Verifier configures the evidence verifier: pinned roots (TestRoots
	// for a simulated fleet), offline operation, collateral cache (the
	// shared vigil-collateral bucket when nil).
	Verifier evidence.Config
	// Policy is applied to release evidence (appraise.DefaultPolicy when
	// nil) until a newer version of it is published as io.vigil.policy.v1
	// on vigil.events.policy.<policy id>.<actor>: keyguard follows those versions
	// as the attest-workers do.
	Policy *appraise.Policy
	// Build is reported as the verifier build of release appraisals.
	Build string
}

// refuse builds a refusal for the requester.
func refuse(code, format string, args ...any) error {
	return &bus.ReplyError{Code: code, Message: fmt.Sprintf(format, args...)}
}

// releasable checks, from the stream leaders, that vm's status is trusted
// or warning and that its local grant for keyName is active. It returns
// the VM's vmId from ARM or the operator (trustedVMID): "" when neither
// knows it.
func (k *Keyguard) releasable(ctx context.Context, vm, keyName string) (string, error) {
	st, err := k.status(ctx, vm)
	switch {
	case bus.IsKeyMissing(err):
		return "", refuse(keyrelease.CodeNotTrusted, "VM %s has no attestation status", vm)
	case err != nil:
		return "", refuse(keyrelease.CodeUnavailable, "read status: %v", err)
	case !st.Status.Releasable():
		return "", refuse(keyrelease.CodeNotTrusted, "VM %s is %s%s", vm, st.Status, reasonCodes(st.Reasons))
	}
	g, err := k.grants.Get(ctx, grants.Key(vm, BackendLocal, keyName))
	switch {
	case errors.Is(err, grants.ErrNotFound):
		return "", refuse(keyrelease.CodeNoGrant, "VM %s has no grant for key %s", vm, keyName)
	case err != nil:
		return "", refuse(keyrelease.CodeUnavailable, "read grant: %v", err)
	case g.State == grants.Revoked:
		return "", refuse(keyrelease.CodeRevoked, "grant of key %s to VM %s is revoked (%s)", keyName, vm, g.Reason)
	case g.State == grants.Suspended:
		return "", refuse(keyrelease.CodeSuspended, "grant of key %s to VM %s is suspended (%s)", keyName, vm, g.Reason)
	}
	vmID, err := k.trustedVMID(ctx, g.Grant)
	switch {
	case errors.Is(err, errVMIDConflict):
		return "", refuse(keyrelease.CodeWrongVM, "%v", err)
	case err != nil:
		return "", refuse(keyrelease.CodeUnavailable, "%v", err)
	}
	return vmID, nil
}

// handleRelease serves vigil.keyguard.release.<vm>.
func (k *Keyguard) handleRelease(ctx context.Context, data []byte) (out []byte, err error) {
	start := time.Now()
	defer func() {
		code := "released"
		if err != nil {
			code = keyrelease.RefusalCode(err)
			if code == "" {
				code = "error"
			}
		}
		attrs := metric.WithAttributes(attribute.String("outcome", code))
		k.metrics.releases.Add(ctx, 1, attrs)
		k.metrics.releaseSeconds.Record(ctx, time.Since(start).Seconds(), attrs)
	}()
	req, err := keyrelease.ParseReleaseRequest(data)
	if err != nil {
		return nil, refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	if err := pinnedVM(ctx, req.VMKey); err != nil {
		return nil, err
	}
	log := k.log.With("vm", req.VMKey, "key", req.KeyName)
	if _, err := k.consumeNonce(ctx, req.Nonce, req.VMKey, purposeRelease); err != nil {
		log.WarnContext(ctx, "release refused", "err", err)
		return nil, err
	}
	// Cheap checks first: a revoked VM is refused without verification.
	vmID, err := k.releasable(ctx, req.VMKey, req.KeyName)
	if err != nil {
		log.WarnContext(ctx, "release refused", "err", err)
		return nil, err
	}
	if vmID == "" {
		err := refuse(keyrelease.CodeWrongVM, "the vmId of VM %s is unknown, so the evidence cannot be tied to it", req.VMKey)
		log.WarnContext(ctx, "release refused", "err", err)
		return nil, err
	}
	if err := k.appraise(ctx, req.VMKey, vmID, req.Nonce, keyrelease.Binding(req.Nonce, req.Suite, req.PublicKey), req.Evidence); err != nil {
		log.WarnContext(ctx, "release refused", "err", err)
		return nil, err
	}
	secret, version, err := k.secrets.Get(ctx, req.KeyName)
	switch {
	case errors.Is(err, secrets.ErrNotFound):
		return nil, refuse(keyrelease.CodeUnknownKey, "no secret named %s", req.KeyName)
	case err != nil:
		log.ErrorContext(ctx, "read secret", "err", err)
		return nil, refuse(keyrelease.CodeUnavailable, "secret %s cannot be read", req.KeyName)
	}
	sealed, err := req.Suite.Seal(req.PublicKey, keyrelease.Info(req.VMKey, req.KeyName, req.Nonce), secret)
	clear(secret)
	if err != nil {
		return nil, refuse(keyrelease.CodeBadRequest, "seal: %v", err)
	}
	if k.hooks.sealed != nil {
		k.hooks.sealed(req.VMKey)
	}
	// Verification and sealing took time: decide on the status, grant and
	// vmId as they are now, the last thing before the answer is recorded
	// and sent, so that a revocation stored meanwhile wins.
	if again, err := k.releasable(ctx, req.VMKey, req.KeyName); err != nil || !strings.EqualFold(again, vmID) {
		if err == nil {
			err = refuse(keyrelease.CodeWrongVM, "the vmId of VM %s changed during the release (%s, now %q)", req.VMKey, vmID, again)
		}
		log.WarnContext(ctx, "release refused after verification", "err", err)
		return nil, err
	}
	now := time.Now().UTC()
	resp := keyrelease.ReleaseResponse{VMKey: req.VMKey, KeyName: req.KeyName, Version: version, Suite: req.Suite, Sealed: sealed, ReleasedAt: now}
	out, err = json.Marshal(resp)
	if err != nil {
		return nil, err
	}
	key := events.Key{VMKey: req.VMKey, VMID: vmID, Action: events.KeyReleased, KeyName: req.KeyName, Backend: BackendLocal,
		Reason: fmt.Sprintf("released version %d", version), Actor: "keyguard", CauseID: nonceKey(req.Nonce), At: now,
		LatencyMS: float64(time.Since(start).Microseconds()) / 1000}
	subject := events.KeySubject(req.VMKey)
	env, err := events.New(events.TypeKey, k.cfg.Source, subject, key)
	if err == nil {
		env.ID = eventID("released", req.VMKey, req.KeyName, nonceKey(req.Nonce))
		_, err = k.conn.Publish(ctx, subject, env)
	}
	if err != nil {
		// Every release is audited: without the record, no secret.
		log.ErrorContext(ctx, "publish release event", "err", err)
		return nil, refuse(keyrelease.CodeUnavailable, "release cannot be recorded: %v", err)
	}
	log.InfoContext(ctx, "secret released", "version", version, "vm_id", vmID, "ms", key.LatencyMS)
	return out, nil
}

// appraise verifies the evidence of a release or an enrollment by vm:
// genuine, carrying the issued nonce and quoting extraData (the binding of
// the nonce to the requester's key), from the VM with vmID, and acceptable
// under policy. A refusal carries a keyrelease code (enrollment uses the
// same strings).
func (k *Keyguard) appraise(ctx context.Context, vm, vmID string, nonce, extraData []byte, bundle json.RawMessage) error {
	// Until the stored versions are read, the configured policy may be
	// one the bus has superseded.
	select {
	case <-k.policy.Synced():
	default:
		return refuse(keyrelease.CodeUnavailable, "the published versions of policy %s are not read yet", k.policy.Policy().ID)
	}
	pol := k.policy.Policy()
	exp := evidence.Expect{Nonce: nonce, ExtraData: extraData, VMID: vmID, VMKey: vm}
	verdict, res, err := appraise.Evidence(ctx, k.verifier, bundle, exp, pol, appraise.Options{Build: k.cfg.Evidence.Build})
	if err != nil && res == nil {
		return refuse(keyrelease.CodeEvidenceRejected, "%v", err)
	}
	// Whatever the policy says about identity, a key goes only to the VM it
	// was granted to: the runtime data's vmUniqueId must be the VM's vmId
	// (and the bundle must not name another VM).
	if res != nil && res.Genuine {
		if !strings.EqualFold(res.VMUniqueID, vmID) {
			return refuse(keyrelease.CodeWrongVM, "evidence is from vmUniqueId %q, VM %s is vmId %s", res.VMUniqueID, vm, vmID)
		}
		if res.BundleVMKey != "" && res.BundleVMKey != vm {
			return refuse(keyrelease.CodeWrongVM, "evidence names VM %s, not %s", res.BundleVMKey, vm)
		}
	}
	if verdict.Status == events.VerdictAffirming || verdict.Status == events.VerdictWarning {
		return nil
	}
	has := func(prefix string) bool {
		for _, r := range verdict.Reasons {
			if strings.HasPrefix(r.Code, prefix) {
				return true
			}
		}
		return false
	}
	switch {
	case verdict.Status == events.VerdictNone:
		return refuse(keyrelease.CodeUnavailable, "evidence could not be appraised now%s", reasonCodes(verdict.Reasons))
	case has(appraise.ReasonIdentityVMIDMismatch) || has(appraise.ReasonIdentityVMKeyMismatch) || has(appraise.ReasonIdentityVMIDMissing):
		return refuse(keyrelease.CodeWrongVM, "evidence is not from VM %s (vmId %s)%s", vm, vmID, reasonCodes(verdict.Reasons))
	case has(evidence.ReasonTPMNonceMismatch):
		return refuse(keyrelease.CodeBindingMismatch, "the quote does not bind this nonce and public key%s", reasonCodes(verdict.Reasons))
	}
	return refuse(keyrelease.CodeEvidenceRejected, "verdict %s under policy %s version %d%s", verdict.Status, pol.ID, pol.Version, reasonCodes(verdict.Reasons))
}

// newPolicyFeed returns the release policy in force: the configured one,
// then the newer versions published on the bus once it follows them.
func newPolicyFeed(js jetstream.JetStream, cfg EvidenceConfig, log *slog.Logger) (*policyfeed.Feed, error) {
	p := cfg.Policy
	if p == nil {
		p = appraise.DefaultPolicy()
	}
	f, err := policyfeed.New(js, p, policyfeed.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("keyguard: %w", err)
	}
	return f, nil
}
