package evidence

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"

	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
)

// ErrOffline is returned when collateral is needed but fetching is disabled.
var ErrOffline = errors.New("not in the collateral cache and fetching is disabled (offline)")

// kdsVCEKURL is AMD KDS's VCEK URL for a chip at a TCB.
func kdsVCEKURL(base, productLine string, chipID []byte, tcb uint64) string {
	t := DecomposeTCB(productLine, tcb)
	if productLine == "Turin" {
		return fmt.Sprintf("%s/vcek/v1/%s/%s?fmcSPL=%d&blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d",
			base, productLine, hex.EncodeToString(chipID[:8]), t.FMC, t.BootLoader, t.TEE, t.SNP, t.Microcode)
	}
	return fmt.Sprintf("%s/vcek/v1/%s/%s?blSPL=%d&teeSPL=%d&snpSPL=%d&ucodeSPL=%d",
		base, productLine, hex.EncodeToString(chipID), t.BootLoader, t.TEE, t.SNP, t.Microcode)
}

// VCEKCacheKey is the collateral cache key of a chip's VCEK at a TCB.
func VCEKCacheKey(productLine string, chipID []byte, tcb uint64) string {
	return fmt.Sprintf("amd.vcek.%s.%s.%016x", productLine, hex.EncodeToString(chipID), tcb)
}

// fetchVCEK returns the DER VCEK from the collateral cache or AMD KDS,
// verified (see checkVCEK): a fetched VCEK is stored only when it
// verifies, a cached one that does not is fetched again. The error wraps
// errCollateralRejected when the VCEK obtained does not verify.
func (v *Verifier) fetchVCEK(ctx context.Context, productLine string, chipID []byte, tcb uint64) ([]byte, error) {
	key := VCEKCacheKey(productLine, chipID, tcb)
	url := kdsVCEKURL(v.cfg.KDSURL, productLine, chipID, tcb)
	var cachedErr error
	der, err := v.coll.Get(ctx, key)
	if err == nil {
		if _, cachedErr = v.checkVCEK(der, productLine, chipID, tcb); cachedErr == nil {
			return der, nil
		}
		v.log.WarnContext(ctx, "cached VCEK does not verify, fetching it again", "key", key, "err", cachedErr)
	} else if !errors.Is(err, collateral.ErrNotFound) {
		v.log.WarnContext(ctx, "collateral cache read failed", "key", key, "err", err)
	}
	if v.cfg.Offline {
		return nil, cachedCopyRejected(url, cachedErr, fmt.Errorf("VCEK for chip %x…: %w", chipID[:8], ErrOffline))
	}
	der, _, err = v.fetch.Fetch(ctx, key, url, func(body []byte, _ http.Header) ([]byte, http.Header, error) {
		// Only a VCEK that verifies is stored: the cache is shared, and
		// keeps it until its NotAfter.
		e, err := v.checkVCEK(body, productLine, chipID, tcb)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w: %w", url, errCollateralRejected, err)
		}
		if err := v.coll.Put(ctx, key, body, e.cert.NotAfter); err != nil {
			v.log.WarnContext(ctx, "collateral cache write failed", "key", key, "err", err)
		}
		return body, nil, nil
	})
	if err != nil {
		err = fmt.Errorf("AMD KDS: %w", err)
	}
	return der, cachedCopyRejected(url, cachedErr, err)
}

// checkVCEK verifies a DER VCEK from AMD KDS or the collateral cache: it
// chains to a trusted ARK of productLine and is chipID's at tcb. The
// verified chain is kept in the Verifier's VCEK cache.
func (v *Verifier) checkVCEK(der []byte, productLine string, chipID []byte, tcb uint64) (*vcekEntry, error) {
	e, ok := v.vceks.Get(der)
	if !ok {
		e = v.newVCEKEntry(der, false, productLine)
		v.vceks.Add(der, e)
	}
	if e.err != nil {
		return nil, e.err
	}
	return e, e.matches(chipID, DecomposeTCB(productLine, tcb))
}
