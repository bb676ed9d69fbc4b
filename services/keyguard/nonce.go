package keyguard

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// nonceRecord is stored per issued nonce in vigil-keyguard-nonces.
type nonceRecord struct {
	VMKey     string    `json:"vm_key"`
	IssuedAt  time.Time `json:"issued_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

func nonceKey(n []byte) string { return hex.EncodeToString(n) }

// handleNonce serves vigil.keyguard.nonce.
func (k *Keyguard) handleNonce(ctx context.Context, data []byte) ([]byte, error) {
	req, err := keyrelease.ParseNonceRequest(data)
	if err != nil {
		return nil, refuse(keyrelease.CodeBadRequest, "%v", err)
	}
	n := evidence.NewNonce()
	now := time.Now().UTC()
	rec := nonceRecord{VMKey: req.VMKey, IssuedAt: now, ExpiresAt: now.Add(k.cfg.NonceTTL)}
	b, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	if _, err := k.nonces.Create(ctx, nonceKey(n), b); err != nil {
		return nil, refuse(keyrelease.CodeUnavailable, "store nonce: %v", err)
	}
	k.metrics.nonces.Add(ctx, 1)
	return json.Marshal(keyrelease.NonceResponse{Nonce: n, ExpiresAt: rec.ExpiresAt})
}

// consumeNonce uses a nonce up, once across every replica: the record is
// deleted with a revision check, so of two releases racing with one nonce
// exactly one proceeds. A nonce is used up even when the release is then
// refused.
func (k *Keyguard) consumeNonce(ctx context.Context, n []byte, vm string) error {
	key := nonceKey(n)
	e, err := kvlast.Get(ctx, k.conn.NC, k.nonces.Bucket(), key)
	if kvlast.IsNotFound(err) {
		return refuse(keyrelease.CodeBadNonce, "nonce unknown, expired or already used")
	}
	if err != nil {
		return refuse(keyrelease.CodeUnavailable, "read nonce: %v", err)
	}
	if err := k.nonces.Delete(ctx, key, jetstream.LastRevision(e.Revision)); err != nil {
		if isRevisionMismatch(err) {
			return refuse(keyrelease.CodeBadNonce, "nonce already used")
		}
		return refuse(keyrelease.CodeUnavailable, "consume nonce: %v", err)
	}
	var rec nonceRecord
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return refuse(keyrelease.CodeBadNonce, "nonce record unreadable")
	}
	if rec.VMKey != vm {
		return refuse(keyrelease.CodeBadNonce, "nonce was issued for another VM")
	}
	if time.Now().After(rec.ExpiresAt) {
		return refuse(keyrelease.CodeBadNonce, "nonce expired at %s", rec.ExpiresAt.Format(time.RFC3339))
	}
	return nil
}

func isRevisionMismatch(err error) bool {
	if errors.Is(err, jetstream.ErrKeyExists) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	return strings.Contains(err.Error(), "wrong last sequence")
}
