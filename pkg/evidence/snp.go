package evidence

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevverify "github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
)

// SNP guest policy bits.
const (
	snpPolicySMT            = 1 << 16
	snpPolicyMigrationAgent = 1 << 18
	snpPolicyDebug          = 1 << 19
)

// SNPClaims are the fields of a verified SEV-SNP attestation report.
type SNPClaims struct {
	Version        uint32 `json:"version"`
	GuestSVN       uint32 `json:"guest_svn"`
	Policy         uint64 `json:"policy"`
	Debug          bool   `json:"debug"`
	MigrationAgent bool   `json:"migration_agent"`
	SMT            bool   `json:"smt"`
	VMPL           uint32 `json:"vmpl"`
	Measurement    []byte `json:"measurement"`
	HostData       []byte `json:"host_data"`
	FamilyID       []byte `json:"family_id"`
	ImageID        []byte `json:"image_id"`
	ReportData     []byte `json:"report_data"`
	ChipID         []byte `json:"chip_id"`
	ReportedTCB    uint64 `json:"reported_tcb"`
	CurrentTCB     uint64 `json:"current_tcb"`
	CommittedTCB   uint64 `json:"committed_tcb"`
	LaunchTCB      uint64 `json:"launch_tcb"`
	TCB            SNPTCB `json:"tcb"`
	ProductLine    string `json:"product_line"`
}

// SNPTCB is a TCB version split into its security patch levels.
type SNPTCB struct {
	FMC        uint8 `json:"fmc,omitempty" yaml:"fmc,omitempty"` // Turin only
	BootLoader uint8 `json:"bootloader" yaml:"bootloader"`
	TEE        uint8 `json:"tee" yaml:"tee"`
	SNP        uint8 `json:"snp" yaml:"snp"`
	Microcode  uint8 `json:"microcode" yaml:"microcode"`
}

// DecomposeTCB splits a TCB_VERSION in the layout of productLine.
func DecomposeTCB(productLine string, tcb uint64) SNPTCB {
	b := func(i int) uint8 { return uint8(tcb >> (8 * i)) }
	if productLine == "Turin" {
		return SNPTCB{FMC: b(0), BootLoader: b(1), TEE: b(2), SNP: b(3), Microcode: b(7)}
	}
	return SNPTCB{BootLoader: b(0), TEE: b(1), SNP: b(6), Microcode: b(7)}
}

// ComposeTCB is the inverse of DecomposeTCB.
func ComposeTCB(productLine string, t SNPTCB) uint64 {
	if productLine == "Turin" {
		return uint64(t.FMC) | uint64(t.BootLoader)<<8 | uint64(t.TEE)<<16 | uint64(t.SNP)<<24 | uint64(t.Microcode)<<56
	}
	return uint64(t.BootLoader) | uint64(t.TEE)<<8 | uint64(t.SNP)<<48 | uint64(t.Microcode)<<56
}

// AtLeast reports whether every component of t is >= the one of min.
func (t SNPTCB) AtLeast(min SNPTCB) bool {
	return t.FMC >= min.FMC && t.BootLoader >= min.BootLoader && t.TEE >= min.TEE && t.SNP >= min.SNP && t.Microcode >= min.Microcode
}

// vcekEntry is a VCEK whose chain to a trusted ARK has been verified.
type vcekEntry struct {
	cert        *x509.Certificate
	der         []byte
	productLine string
	exts        *kds.Extensions
	root        *trust.AMDRootCerts // the trusted root set the VCEK chains to
	askSerial   string              // serialKey of root's ASK
	vcekSerial  string              // serialKey of the VCEK
	err         error               // chain verification failure, cached too
	crossCheck  atomic.Bool         // go-sev-guest's full verification has agreed once
}

func (v *Verifier) verifySNP(ctx context.Context, res *Result, b *Bundle, rep *hcl.Report) []byte {
	hw := rep.Hardware
	if err := abi.ValidateReportFormat(hw); err != nil {
		res.fail(ReasonSNPReportMalformed, "%v", err)
		return nil
	}
	report, err := abi.ReportToProto(hw)
	if err != nil {
		res.fail(ReasonSNPReportMalformed, "%v", err)
		return nil
	}
	info, err := abi.ParseSignerInfo(report.GetSignerInfo())
	if err != nil {
		res.fail(ReasonSNPReportMalformed, "signer info: %v", err)
		return nil
	}
	if info.SigningKey != abi.VcekReportSigner {
		res.fail(ReasonSNPVCEKUnavailable, "report signed by %v; only VCEK-signed reports are supported", info.SigningKey)
		return nil
	}
	productLine := ""
	if fms := report.GetCpuid1EaxFms(); fms != 0 {
		productLine = kds.ProductLineFromFms(fms)
		if _, ok := v.roots.amd[productLine]; !ok {
			res.fail(ReasonSNPProductUnknown, "CPUID 0x%x is not Milan, Genoa or Turin", fms)
			return nil
		}
	}

	e := v.vcek(ctx, res, b.VCEK, report, productLine)
	if e == nil {
		return nil
	}
	if productLine == "" {
		productLine = e.productLine
	} else if e.productLine != productLine {
		res.fail(ReasonSNPVCEKInvalid, "VCEK is for %s, report from %s", e.productLine, productLine)
		return nil
	}
	claims := snpClaims(report, productLine)
	res.SNP = claims
	res.TCB = events.TCB{
		BootLoader: claims.TCB.BootLoader, TEE: claims.TCB.TEE, SNP: claims.TCB.SNP,
		Microcode: claims.TCB.Microcode, FMC: claims.TCB.FMC,
		Measurement: hex.EncodeToString(claims.Measurement), Product: productLine,
	}

	// The VCEK must be the one for this chip at the reported TCB.
	if err := e.matches(report.GetChipId(), claims.TCB); err != nil {
		res.fail(ReasonSNPVCEKMismatch, "%v", err)
		return nil
	}

	if err := sevverify.SnpReportSignature(hw, e.cert); err != nil {
		res.fail(ReasonSNPSignatureInvalid, "%v", err)
		return report.GetReportData()
	}
	if !e.crossCheck.Load() {
		// First use of this VCEK: let go-sev-guest verify the whole
		// attestation against the same trusted roots as well.
		att := &spb.Attestation{Report: report, CertificateChain: &spb.CertificateChain{VcekCert: e.der}}
		opts := &sevverify.Options{DisableCertFetching: true, TrustedRoots: v.roots.amd, Now: v.now()}
		if err := sevverify.SnpAttestationContext(ctx, att, opts); err != nil {
			res.fail(ReasonSNPVCEKInvalid, "go-sev-guest rejects the attestation: %v", err)
			return report.GetReportData()
		}
		e.crossCheck.Store(true)
	}
	if v.cfg.SNPRevocation {
		v.checkSNPRevocation(ctx, res, e)
	}
	return report.GetReportData()
}

func snpClaims(r *spb.Report, productLine string) *SNPClaims {
	return &SNPClaims{
		Version:        r.GetVersion(),
		GuestSVN:       r.GetGuestSvn(),
		Policy:         r.GetPolicy(),
		Debug:          r.GetPolicy()&snpPolicyDebug != 0,
		MigrationAgent: r.GetPolicy()&snpPolicyMigrationAgent != 0,
		SMT:            r.GetPolicy()&snpPolicySMT != 0,
		VMPL:           r.GetVmpl(),
		Measurement:    r.GetMeasurement(),
		HostData:       r.GetHostData(),
		FamilyID:       r.GetFamilyId(),
		ImageID:        r.GetImageId(),
		ReportData:     r.GetReportData(),
		ChipID:         r.GetChipId(),
		ReportedTCB:    r.GetReportedTcb(),
		CurrentTCB:     r.GetCurrentTcb(),
		CommittedTCB:   r.GetCommittedTcb(),
		LaunchTCB:      r.GetLaunchTcb(),
		TCB:            DecomposeTCB(productLine, r.GetReportedTcb()),
		ProductLine:    productLine,
	}
}

// vcek finds the VCEK (bundle, collateral cache, AMD KDS) and verifies its
// chain to a trusted ARK, caching the result by the certificate bytes.
func (v *Verifier) vcek(ctx context.Context, res *Result, bundlePEM []byte, report *spb.Report, productLine string) *vcekEntry {
	var src []byte
	fromBundle := len(bundlePEM) > 0
	if fromBundle {
		src = bundlePEM
	} else {
		if productLine == "" {
			res.unavailable(ReasonSNPVCEKUnavailable, "report version %d carries no CPUID and the bundle no VCEK: product line unknown", report.GetVersion())
			return nil
		}
		der, err := v.fetchVCEK(ctx, productLine, report.GetChipId(), report.GetReportedTcb())
		if errors.Is(err, errCollateralRejected) {
			res.fail(ReasonSNPVCEKInvalid, "%v", err)
			return nil
		}
		if err != nil {
			res.unavailable(ReasonSNPVCEKUnavailable, "%v", err)
			return nil
		}
		src = der
	}
	e, ok := v.vceks.Get(src)
	if !ok {
		e = v.newVCEKEntry(src, fromBundle, productLine)
		v.vceks.Add(src, e)
	}
	if e.err != nil {
		res.fail(ReasonSNPVCEKInvalid, "%v", e.err)
		return nil
	}
	now := v.now()
	if now.Before(e.cert.NotBefore) || now.After(e.cert.NotAfter) {
		res.fail(ReasonSNPVCEKInvalid, "VCEK is valid from %s to %s", e.cert.NotBefore.Format(time.RFC3339), e.cert.NotAfter.Format(time.RFC3339))
		return nil
	}
	return e
}

// matches checks that e is the VCEK of chipID (unless all zero: masked)
// at tcb.
func (e *vcekEntry) matches(chipID []byte, tcb SNPTCB) error {
	if !bytes.Equal(chipID, make([]byte, len(chipID))) &&
		(len(e.exts.HWID) == 0 || !bytes.HasPrefix(chipID, e.exts.HWID)) {
		return fmt.Errorf("VCEK hwID %x is not the report's chip ID", e.exts.HWID)
	}
	certTCB := kds.DecomposeTCBVersion(e.exts.TCBVersion)
	if tcb.BootLoader != certTCB.BlSpl || tcb.TEE != certTCB.TeeSpl || tcb.SNP != certTCB.SnpSpl || tcb.Microcode != certTCB.UcodeSpl {
		return fmt.Errorf("VCEK TCB %+v is not the reported TCB %+v", certTCB, tcb)
	}
	return nil
}

func (v *Verifier) newVCEKEntry(src []byte, isPEM bool, productLine string) *vcekEntry {
	e := &vcekEntry{}
	var cert *x509.Certificate
	if isPEM {
		cert, e.err = vcekFromPEM(src)
	} else {
		cert, e.err = x509.ParseCertificate(src)
	}
	if e.err != nil {
		return e
	}
	e.cert, e.der = cert, cert.Raw
	if e.exts, e.err = kds.VcekCertificateExtensions(cert); e.err != nil {
		e.err = fmt.Errorf("VCEK extensions: %w", e.err)
		return e
	}
	if productLine == "" {
		p, err := kds.ParseProductName(e.exts.ProductName, abi.VcekReportSigner)
		if err != nil {
			e.err = fmt.Errorf("VCEK product name: %w", err)
			return e
		}
		productLine = kds.ProductLine(p)
	}
	e.productLine = productLine
	roots := v.roots.amd[productLine]
	if len(roots) == 0 {
		e.err = fmt.Errorf("no trusted roots for product line %q", productLine)
		return e
	}
	var lastErr error
	for _, r := range roots {
		opts := r.X509Options(v.now(), abi.VcekReportSigner)
		if opts == nil {
			continue
		}
		if _, err := cert.Verify(*opts); err != nil {
			lastErr = err
			continue
		}
		if cert.SignatureAlgorithm != x509.SHA384WithRSAPSS || cert.PublicKeyAlgorithm != x509.ECDSA {
			lastErr = fmt.Errorf("VCEK algorithms %v/%v are not RSA-PSS-SHA384/ECDSA", cert.SignatureAlgorithm, cert.PublicKeyAlgorithm)
			continue
		}
		e.root = r
		e.askSerial = serialKey(r.ProductCerts.Ask.SerialNumber)
		e.vcekSerial = serialKey(cert.SerialNumber)
		return e
	}
	e.err = fmt.Errorf("VCEK does not chain to a trusted %s ARK: %v", productLine, lastErr)
	return e
}

// vcekFromPEM picks the VCEK from PEM that may also hold ASK and ARK (which
// are ignored: only pinned roots are trusted).
func vcekFromPEM(b []byte) (*x509.Certificate, error) {
	rest := b
	for n := 0; n < 8; n++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("vcek PEM: %w", err)
		}
		if c.Subject.CommonName == "SEV-VCEK" {
			return c, nil
		}
	}
	return nil, errors.New("vcek PEM holds no certificate with subject SEV-VCEK")
}
