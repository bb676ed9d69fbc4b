package keyguard

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// nonceRecord is stored per issued nonce in vigil-keyguard-nonces.
type nonceRecord struct {
	VMKey string `json:"vm_key"`
	// Purpose is what the nonce may be used for: purposeRelease or
	// purposeEnroll, so that one exchange's nonce never serves the other.
	Purpose string `json:"purpose,omitempty"`
	// VMID is, for an enrollment nonce, the VM's vmId from ARM when the
	// nonce was issued: the vmId the enrollment's evidence is appraised
	// against. The enrollment reads the VM's record again after the
	// appraisal and refuses unless it still names this vmId, so the
	// evidence always matches the vmId read after its verification.
	VMID      string    `json:"vm_id,omitempty"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Nonce purposes.
const (
	purposeRelease = ""
	purposeEnroll  = "enroll"
)

// nonceKey names a nonce (in events and logs): its hex encoding.
func nonceKey(n []byte) string { return hex.EncodeToString(n) }

// nonceRecordKey is the KV key of a nonce issued for vm, <vm>.<hex nonce>:
// one subject filter finds the nonces a VM holds.
func nonceRecordKey(vm string, n []byte) string { return vm + "." + nonceKey(n) }

// noncePurgeMarkerTTL is how long the marker of a used nonce stays in the
// bucket (the server's minimum).
const noncePurgeMarkerTTL = time.Second

// headerRequestInfo is the header in which the NATS server names the
// requester of a request that reached keyguard through a service import.
const headerRequestInfo = "Nats-Request-Info"

// handleNonce serves vigil.keyguard.nonce.<vm>. It issues a nonce only for a VM
// that holds an active local grant, at most Nonces.PerVM unused ones per VM,
// within per-requester and per-VM rates; everything else is refused before
// anything is stored.
func (k *Keyguard) handleNonce(ctx context.Context, data []byte) (_ []byte, err error) {
	defer func() {
		if err != nil {
			k.metrics.nonceRefusals.Add(ctx, 1, metric.WithAttributes(attribute.String("code", keyrelease.RefusalCode(err))))
		}
	}()
	req, err := keyrelease.ParseNonceRequest(data)
	if err != nil {
		return nil, refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	if err := pinnedVM(ctx, req.VMKey); err != nil {
		return nil, err
	}
	now := time.Now()
	// The requester's rate is checked first: it bounds the grant lookups a
	// requester can cause, for VMs that exist or not.
	if who := requester(ctx); who != "" && !k.requesterNonces.allow(who, now) {
		return nil, refuse(keyrelease.CodeRateLimited, "too many nonce requests from %s; retry later", who)
	}
	if err := k.nonceGrant(ctx, req.VMKey); err != nil {
		return nil, err
	}
	n, expires, err := k.issueNonce(ctx, req.VMKey, purposeRelease, "", now)
	if err != nil {
		return nil, err
	}
	return json.Marshal(keyrelease.NonceResponse{Nonce: n, ExpiresAt: expires})
}

// issueNonce stores a fresh nonce for vm (of vmID, when known), usable for
// purpose alone, within the VM's rate and its bound on unused nonces
// (shared by both purposes).
func (k *Keyguard) issueNonce(ctx context.Context, vm, purpose, vmID string, now time.Time) ([]byte, time.Time, error) {
	if !k.vmNonces.allow(purpose+"/"+vm, now) {
		return nil, time.Time{}, refuse(keyrelease.CodeRateLimited, "too many nonces for VM %s; retry later", vm)
	}
	if err := k.underNonceLimit(ctx, vm, 0); err != nil {
		return nil, time.Time{}, err
	}
	n := evidence.NewNonce()
	now = now.UTC()
	rec := nonceRecord{VMKey: vm, Purpose: purpose, VMID: vmID, IssuedAt: now, ExpiresAt: now.Add(k.cfg.NonceTTL)}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, time.Time{}, err
	}
	key := nonceRecordKey(vm, n)
	if _, err := k.nonces.Create(ctx, key, b, jetstream.KeyTTL(storedNonceTTL(k.cfg.NonceTTL))); err != nil {
		return nil, time.Time{}, refuse(keyrelease.CodeUnavailable, "store nonce: %v", err)
	}
	// Replicas, and requests on one replica, count at the same time: count
	// again with this nonce stored, so that at most PerVM are ever handed
	// out. Racing requests may then all withdraw theirs, which is safe.
	if err := k.underNonceLimit(ctx, vm, 1); err != nil {
		if perr := k.nonces.Purge(ctx, key, jetstream.PurgeTTL(noncePurgeMarkerTTL)); perr != nil {
			k.log.WarnContext(ctx, "withdraw nonce", "vm", vm, "err", perr)
		}
		return nil, time.Time{}, err
	}
	k.metrics.nonces.Add(ctx, 1)
	return n, rec.ExpiresAt, nil
}

// nonceGrant refuses a nonce to a VM without an active local grant. The
// refusal names no key; for a VM whose local grants are all suspended or
// revoked it carries the code its release would be refused with.
func (k *Keyguard) nonceGrant(ctx context.Context, vm string) error {
	state, err := k.grants.BestState(ctx, vm, BackendLocal)
	switch {
	case errors.Is(err, grants.ErrNotFound):
		return refuse(keyrelease.CodeNoGrant, "VM %s holds no grant", vm)
	case err != nil:
		return refuse(keyrelease.CodeUnavailable, "read grants: %v", err)
	case state == grants.Suspended:
		return refuse(keyrelease.CodeSuspended, "VM %s holds no active grant: suspended", vm)
	case state == grants.Revoked:
		return refuse(keyrelease.CodeRevoked, "VM %s holds no active grant: revoked", vm)
	}
	return nil
}

// underNonceLimit refuses when vm holds more than Nonces.PerVM-1+included
// nonces: the stored nonces of vm are counted from the bucket stream's
// subject state, one request to the stream leader. Expired nonces leave the
// bucket by their TTL; a used one counts for up to noncePurgeMarkerTTL.
func (k *Keyguard) underNonceLimit(ctx context.Context, vm string, included int) error {
	stored, err := k.countNonces(ctx, vm)
	if err != nil {
		return refuse(keyrelease.CodeUnavailable, "count nonces: %v", err)
	}
	if held := stored - included; held >= k.cfg.Nonces.PerVM {
		return refuse(keyrelease.CodeRateLimited, "VM %s holds %d unused nonces, the most it may; use them or let them expire", vm, held)
	}
	return nil
}

// countNonces counts the subjects of vm's nonces in the bucket's stream:
// the stream information filtered by subject, which the stream leader
// answers, decoding no more of the answer than the count. (The
// stream's configuration, state and cluster make up most of the answer;
// jetstream.Stream.Info decodes all of it, on every nonce issued.)
func (k *Keyguard) countNonces(ctx context.Context, vm string) (int, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, kvlast.DefaultTimeout)
		defer cancel()
	}
	req, err := json.Marshal(struct {
		Filter string `json:"subjects_filter"`
	}{nonceSubjectPrefix + vm + ".*"})
	if err != nil {
		return 0, err
	}
	msg, err := k.conn.NC.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+k.nonceStream.CachedInfo().Config.Name, req)
	if err != nil {
		return 0, err
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error,omitempty"`
		// Total is the number of subjects the filter matched, of which
		// State.Subjects holds one page.
		Total int `json:"total"`
		State *struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return 0, fmt.Errorf("unreadable answer: %w", err)
	}
	switch {
	case resp.Error != nil:
		return 0, fmt.Errorf("%s (%d/%d)", resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	case resp.State == nil:
		return 0, jetstream.ErrInvalidJetStreamResponse
	}
	return max(resp.Total, len(resp.State.Subjects)), nil
}

// nonceSubjectPrefix prefixes the KV keys of the nonce bucket's subjects.
const nonceSubjectPrefix = "$KV." + events.BucketKeyguardNonces + "."

// storedNonceTTL is the TTL a nonce record is stored with: the nonce's
// validity in whole seconds, at least one (the server's granularity).
func storedNonceTTL(d time.Duration) time.Duration {
	return max(time.Second, (d+time.Second-1)/time.Second*time.Second)
}

// requester names the sender of the request being served as the NATS
// server reports it in the Nats-Request-Info header, "account/user", or
// "" when the header is missing or names no user. The server sets the
// header when a request crosses a service import (and the user only when
// the import shares it); within one account a client can send the header
// itself, which gains it nothing the per-VM bounds do not cover.
func requester(ctx context.Context) string {
	v := bus.RequestHeader(ctx).Get(headerRequestInfo)
	if v == "" || len(v) > 16<<10 {
		return ""
	}
	var ci struct {
		Account string `json:"acc"`
		User    string `json:"user"`
	}
	if err := json.Unmarshal([]byte(v), &ci); err != nil || ci.User == "" {
		return ""
	}
	return ci.Account + "/" + ci.User
}

// consumeNonce uses a nonce up, once across every replica: the record is
// purged with a revision check, so of two releases racing with one nonce
// exactly one proceeds. A nonce is used up even when the release is then
// refused. It returns the nonce's record.
func (k *Keyguard) consumeNonce(ctx context.Context, n []byte, vm, purpose string) (nonceRecord, error) {
	key := nonceRecordKey(vm, n)
	e, err := kvlast.Get(ctx, k.conn.NC, k.nonces.Bucket(), key)
	if bus.IsKeyMissing(err) {
		return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce unknown, expired, already used or issued for another VM")
	}
	if err != nil {
		return nonceRecord{}, refuse(keyrelease.CodeUnavailable, "read nonce: %v", err)
	}
	if err := k.nonces.Purge(ctx, key, jetstream.LastRevision(e.Revision), jetstream.PurgeTTL(noncePurgeMarkerTTL)); err != nil {
		if bus.IsRevisionConflict(err) {
			return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce already used")
		}
		return nonceRecord{}, refuse(keyrelease.CodeUnavailable, "consume nonce: %v", err)
	}
	var rec nonceRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce record unreadable")
	}
	if rec.VMKey != vm {
		return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce was issued for another VM")
	}
	if rec.Purpose != purpose {
		return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce was issued for another purpose (%q)", rec.Purpose)
	}
	if time.Now().After(rec.ExpiresAt) {
		return nonceRecord{}, refuse(keyrelease.CodeBadNonce, "nonce expired at %s", rec.ExpiresAt.Format(time.RFC3339))
	}
	return rec, nil
}
