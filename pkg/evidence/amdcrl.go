package evidence

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/google/go-sev-guest/verify/trust"
)

// AMD certificate revocation (Config.SNPRevocation). AMD KDS publishes one
// CRL per product line at {KDSURL}/vcek/v1/{Milan|Genoa|Turin}/crl: a DER
// X.509 CRL issued and signed by that line's ARK (RSASSA-PSS with SHA-384)
// listing revoked ASKs (and possibly VCEKs). It is fetched through the
// collateral cache (kept there until its nextUpdate, and only once its
// signature has been checked), verified against the pinned ARK the VCEK
// chains to, and its revoked serial numbers are kept in memory per ARK until
// nextUpdate, so steady-state verification costs two map lookups.

// kdsCRLRetry is how long a CRL found invalid is remembered before it is
// obtained again (an invalid answer is not cached in the collateral cache).
const kdsCRLRetry = time.Minute

// kdsCRLURL is AMD KDS's CRL URL of a product line.
func kdsCRLURL(base, productLine string) string {
	return base + "/vcek/v1/" + productLine + "/crl"
}

// KDSCRLCacheKey is the collateral cache key of a product line's CRL. Every
// read from the cache is verified against the pinned ARK again.
func KDSCRLCacheKey(productLine string) string { return "amd.crl." + productLine }

// amdCRL is one product line's CRL as verified against an ARK.
type amdCRL struct {
	// revoked maps serialKey(serial number) to the revocation time.
	revoked map[string]time.Time
	// until is when to obtain the CRL again: its nextUpdate, or after
	// kdsCRLRetry when it is invalid.
	until time.Time
	// err is why the CRL is invalid (signature, expiry, encoding).
	err error
}

// amdCRLSlot holds the current CRL of one trusted ARK.
type amdCRLSlot struct {
	cur atomic.Pointer[amdCRL]
}

// newAMDCRLSlots returns a slot per trusted AMD root set.
func newAMDCRLSlots(ts *trustStore) map[*trust.AMDRootCerts]*amdCRLSlot {
	m := make(map[*trust.AMDRootCerts]*amdCRLSlot)
	for _, roots := range ts.amd {
		for _, r := range roots {
			m[r] = &amdCRLSlot{}
		}
	}
	return m
}

// serialKey is the key of a certificate serial number in amdCRL.revoked.
func serialKey(n *big.Int) string { return n.Text(16) }

// parseAMDCRL parses a DER CRL of AMD KDS and verifies that ark signed it
// with RSASSA-PSS SHA-384 and that it is current at now. The result's err is
// set when it is not.
func parseAMDCRL(der []byte, ark *x509.Certificate, now time.Time) *amdCRL {
	c := &amdCRL{until: now.Add(kdsCRLRetry)}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		c.err = fmt.Errorf("CRL: %w", err)
		return c
	}
	if crl.SignatureAlgorithm != x509.SHA384WithRSAPSS {
		c.err = fmt.Errorf("CRL is signed with %v, not %v", crl.SignatureAlgorithm, x509.SHA384WithRSAPSS)
		return c
	}
	if err := crl.CheckSignatureFrom(ark); err != nil {
		c.err = fmt.Errorf("CRL is not signed by the pinned ARK (%s): %w", ark.Subject.CommonName, err)
		return c
	}
	if !crl.NextUpdate.IsZero() && !now.Before(crl.NextUpdate) {
		c.err = fmt.Errorf("CRL expired at %s (nextUpdate)", crl.NextUpdate.UTC().Format(time.RFC3339))
		return c
	}
	c.until = crl.NextUpdate
	if c.until.IsZero() {
		c.until = now.Add(pcsFallbackTTL)
	}
	c.revoked = make(map[string]time.Time, len(crl.RevokedCertificateEntries))
	for _, r := range crl.RevokedCertificateEntries {
		if r.SerialNumber != nil {
			c.revoked[serialKey(r.SerialNumber)] = r.RevocationTime
		}
	}
	return c
}

// checkSNPRevocation checks the product line's CRL for the ASK and the VCEK
// of e.
func (v *Verifier) checkSNPRevocation(ctx context.Context, res *Result, e *vcekEntry) {
	slot := v.amdCRLs[e.root]
	if slot == nil { // cannot happen: every trusted root set has a slot
		res.fail(ReasonVerifierError, "no CRL slot for the %s ARK", e.productLine)
		return
	}
	now := v.now()
	c := slot.cur.Load()
	if c == nil || !now.Before(c.until) {
		var err error
		if c, err = v.loadAMDCRL(ctx, e, now); err != nil {
			res.unavailable(ReasonSNPCRLUnavailable, "AMD %s CRL: %v", e.productLine, err)
			return
		}
		slot.cur.Store(c)
	}
	if c.err != nil {
		res.fail(ReasonSNPCRLInvalid, "AMD %s: %v", e.productLine, c.err)
		return
	}
	if t, ok := c.revoked[e.askSerial]; ok {
		res.fail(ReasonSNPCertRevoked, "the %s ASK (serial %s) is revoked by AMD's CRL since %s", e.productLine, e.askSerial, t.UTC().Format(time.RFC3339))
	}
	if t, ok := c.revoked[e.vcekSerial]; ok {
		res.fail(ReasonSNPCertRevoked, "the VCEK (serial %s) is revoked by AMD's %s CRL since %s", e.vcekSerial, e.productLine, t.UTC().Format(time.RFC3339))
	}
}

// loadAMDCRL obtains the CRL of e's product line (collateral cache, AMD KDS)
// and verifies it against e's ARK. The error is non-nil only when the CRL
// could not be obtained; an invalid CRL is an amdCRL with err set.
func (v *Verifier) loadAMDCRL(ctx context.Context, e *vcekEntry, now time.Time) (*amdCRL, error) {
	ark := e.root.ProductCerts.Ark
	u := kdsCRLURL(v.cfg.KDSURL, e.productLine)
	var valid *amdCRL // the answer check accepted last
	body, _, err := v.fetchCollateral(ctx, KDSCRLCacheKey(e.productLine), u, func(body []byte, _ http.Header) (time.Time, error) {
		c := parseAMDCRL(body, ark, now)
		if c.err != nil {
			return time.Time{}, c.err
		}
		valid = c
		return c.until, nil
	})
	switch {
	case errors.Is(err, errCollateralRejected): // fetched or cached, the CRL is invalid
		return &amdCRL{until: now.Add(kdsCRLRetry), err: err}, nil
	case err != nil:
		return nil, err
	case valid != nil:
		return valid, nil
	}
	return parseAMDCRL(body, ark, now), nil // another call fetched it
}
