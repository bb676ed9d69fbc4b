package agent

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"

	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
)

// Azure vTPM locations.
const (
	// HCLReportIndex is the NV index where Azure's HCL writes the
	// attestation report at boot.
	HCLReportIndex = 0x01400001
	// AKHandle is the persistent handle of Azure's attestation key
	// (HCLAkPub in the runtime data).
	AKHandle = 0x81000003
	// DefaultTPMPath is the kernel's resource-managed TPM device.
	DefaultTPMPath = "/dev/tpmrm0"
	// DefaultEventLogPath is where the kernel exposes the TCG event log.
	DefaultEventLogPath = "/sys/kernel/security/tpm0/binary_bios_measurements"
)

// openDevice opens the TPM character device at path.
func openDevice(path string) func() (transport.TPMCloser, error) {
	return func() (transport.TPMCloser, error) { return linuxtpm.Open(path) }
}

// numPCRs is the number of SHA-256 PCRs quoted (PC client TPMs have 24).
const numPCRs = 24

// ErrTPM is matched (errors.Is) by every error from the TPM.
var ErrTPM = errors.New("vTPM")

// AzureTPMConfig configures the Azure vTPM evidence source.
type AzureTPMConfig struct {
	// Open opens the TPM; default opens DefaultTPMPath.
	Open func() (transport.TPMCloser, error)
	// IMDS fetches the VCEK (SEV-SNP) and the TD quote (TDX); default
	// NewIMDS("").
	IMDS *IMDS
	// EventLogPath is read into the bundle when the file exists; default
	// DefaultEventLogPath. Set it to "-" to leave the event log out.
	EventLogPath string
	// NVIndex and AK default to HCLReportIndex and AKHandle.
	NVIndex, AK uint32
	// VMKey is written into the bundle when set.
	VMKey string
	// CertTTL bounds how long the VCEK from THIM is reused (default 1 h).
	CertTTL time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// AzureTPM collects evidence from the vTPM of an Azure Confidential VM:
// the HCL report from NV, a quote over every SHA-256 PCR with the challenge
// nonce as extraData, the event log, and the VCEK (SEV-SNP) or TD quote
// (TDX) from the instance metadata service. Access to the TPM is
// serialised; a challenge whose deadline passes while it waits or while the
// TPM works gets an error, and the TPM is not used by two challenges at once.
type AzureTPM struct {
	cfg  AzureTPMConfig
	log  *slog.Logger
	lock chan struct{} // one holder: the TPM is used by one challenge at a time

	tpm transport.TPMCloser // guarded by lock

	certMu    sync.Mutex
	cert      []byte
	certUntil time.Time
}

// NewAzureTPM returns the source for cfg. The TPM is opened on first use
// and reopened after an error.
func NewAzureTPM(cfg AzureTPMConfig) *AzureTPM {
	if cfg.Open == nil {
		cfg.Open = openDevice(DefaultTPMPath)
	}
	if cfg.IMDS == nil {
		cfg.IMDS = NewIMDS("")
	}
	if cfg.EventLogPath == "" {
		cfg.EventLogPath = DefaultEventLogPath
	}
	if cfg.NVIndex == 0 {
		cfg.NVIndex = HCLReportIndex
	}
	if cfg.AK == 0 {
		cfg.AK = AKHandle
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &AzureTPM{cfg: cfg, log: cfg.Logger, lock: make(chan struct{}, 1)}
}

// Close releases the TPM.
func (a *AzureTPM) Close() error {
	a.lock <- struct{}{}
	defer func() { <-a.lock }()
	if a.tpm == nil {
		return nil
	}
	err := a.tpm.Close()
	a.tpm = nil
	return err
}

// tpmEvidence is what one locked TPM session read.
type tpmEvidence struct {
	hcl    []byte
	attest []byte
	sig    []byte
	pcrs   map[int][]byte
}

// Evidence returns a vigil.evidence/v1 bundle carrying nonce whose quote
// has extraData as qualifying data (see Source).
func (a *AzureTPM) Evidence(ctx context.Context, nonce, extraData []byte) ([]byte, error) {
	if len(nonce) == 0 || len(nonce) > evidence.MaxNonceSize {
		return nil, fmt.Errorf("nonce of %d bytes: want 1..%d", len(nonce), evidence.MaxNonceSize)
	}
	if len(extraData) == 0 || len(extraData) > evidence.MaxNonceSize {
		return nil, fmt.Errorf("extraData of %d bytes: want 1..%d", len(extraData), evidence.MaxNonceSize)
	}
	select {
	case a.lock <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: waiting for the TPM: %w", ErrTPM, ctx.Err())
	}
	if err := ctx.Err(); err != nil {
		// Both were ready and the lock was chosen: a challenge whose
		// deadline has passed starts no TPM session (it would hold the
		// TPM for nothing).
		<-a.lock
		return nil, fmt.Errorf("%w: waiting for the TPM: %w", ErrTPM, err)
	}
	// A TPM command cannot be interrupted: run the session in its own
	// goroutine, which releases the lock when the TPM is done, and give up
	// waiting for it when the deadline passes.
	type result struct {
		ev  *tpmEvidence
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer func() { <-a.lock }()
		ev, err := a.session(extraData)
		done <- result{ev, err}
	}()
	var ev *tpmEvidence
	select {
	case r := <-done:
		if r.err != nil {
			return nil, r.err
		}
		ev = r.ev
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: quote did not finish in time: %w", ErrTPM, ctx.Err())
	}

	rep, err := hcl.Parse(ev.hcl)
	if err != nil {
		return nil, fmt.Errorf("%w: HCL report in NV index %#x: %w", ErrTPM, a.cfg.NVIndex, err)
	}
	b := &evidence.Bundle{
		Format:      evidence.Format,
		VMKey:       a.cfg.VMKey,
		Nonce:       nonce,
		CollectedAt: time.Now().UTC().Truncate(time.Second),
		HCLReport:   ev.hcl,
		TPMQuote:    evidence.TPMQuote{Attest: ev.attest, Signature: ev.sig, PCRBank: "sha256", PCRs: ev.pcrs},
	}
	switch rep.Type {
	case hcl.ReportTypeSNP:
		b.Platform = evidence.PlatformAzureSNP
		b.VCEK = a.vcek(ctx)
	case hcl.ReportTypeTDX:
		b.Platform = evidence.PlatformAzureTDX
		q, err := a.cfg.IMDS.TDQuote(ctx, rep.Hardware)
		if err != nil {
			return nil, fmt.Errorf("TD quote: %w", err)
		}
		b.TDQuote = q
	default:
		return nil, fmt.Errorf("%w: HCL report of unknown type %v", ErrTPM, rep.Type)
	}
	b.EventLog = a.eventLog()
	return b.Marshal()
}

// vcek returns the VCEK chain from THIM, cached for CertTTL. Without it the
// verifier fetches the VCEK from AMD itself, so a failure is only logged.
func (a *AzureTPM) vcek(ctx context.Context) []byte {
	a.certMu.Lock()
	defer a.certMu.Unlock()
	if a.cert != nil && time.Now().Before(a.certUntil) {
		return a.cert
	}
	c, err := a.cfg.IMDS.AMDCertification(ctx)
	if err != nil {
		a.log.WarnContext(ctx, "no VCEK from the instance metadata service; the verifier must fetch it", "err", err)
		return a.cert // the previous one, if any
	}
	a.cert = c.PEM()
	a.certUntil = time.Now().Add(a.cfg.CertTTL)
	return a.cert
}

// eventLog reads the TCG event log, or returns nil when there is none or
// it is larger than a bundle may carry.
func (a *AzureTPM) eventLog() []byte {
	if a.cfg.EventLogPath == "-" {
		return nil
	}
	f, err := os.Open(a.cfg.EventLogPath)
	if err != nil {
		return nil
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, evidence.MaxEventLogSize+1))
	if err != nil || len(data) == 0 {
		return nil
	}
	if len(data) > evidence.MaxEventLogSize {
		a.log.Warn("event log larger than a bundle may carry; left out", "path", a.cfg.EventLogPath, "limit", evidence.MaxEventLogSize)
		return nil
	}
	return data
}

// session runs the TPM commands of one challenge. The caller holds the lock.
func (a *AzureTPM) session(extraData []byte) (*tpmEvidence, error) {
	if a.tpm == nil {
		t, err := a.cfg.Open()
		if err != nil {
			return nil, fmt.Errorf("%w: open: %w", ErrTPM, err)
		}
		a.tpm = t
	}
	ev, err := a.collect(a.tpm, extraData)
	if err != nil {
		// Reopen next time: the device or simulator may have gone away.
		_ = a.tpm.Close()
		a.tpm = nil
		return nil, err
	}
	return ev, nil
}

func (a *AzureTPM) collect(t transport.TPM, extraData []byte) (*tpmEvidence, error) {
	report, err := readNV(t, tpm2.TPMHandle(a.cfg.NVIndex))
	if err != nil {
		return nil, err
	}
	ak, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(a.cfg.AK)}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("%w: attestation key %#x: %w", ErrTPM, a.cfg.AK, err)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(allPCRs()...)}}}
	// A PCR may be extended between the quote and the read: retry until the
	// values read match the quoted digest.
	for try := 0; try < 3; try++ {
		q, err := tpm2.Quote{
			SignHandle:     tpm2.AuthHandle{Handle: tpm2.TPMHandle(a.cfg.AK), Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
			QualifyingData: tpm2.TPM2BData{Buffer: extraData},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("%w: quote: %w", ErrTPM, err)
		}
		pcrs, err := readPCRs(t)
		if err != nil {
			return nil, err
		}
		attest := q.Quoted.Bytes()
		st, err := tpm2.Unmarshal[tpm2.TPMSAttest](attest)
		if err != nil {
			return nil, fmt.Errorf("%w: quote attest: %w", ErrTPM, err)
		}
		info, err := st.Attested.Quote()
		if err != nil {
			return nil, fmt.Errorf("%w: quote attest: %w", ErrTPM, err)
		}
		h := sha256.New()
		for i := range numPCRs {
			h.Write(pcrs[i])
		}
		if bytes.Equal(h.Sum(nil), info.PCRDigest.Buffer) {
			return &tpmEvidence{hcl: report, attest: attest, sig: tpm2.Marshal(q.Signature), pcrs: pcrs}, nil
		}
	}
	return nil, fmt.Errorf("%w: PCRs kept changing while quoting", ErrTPM)
}

func allPCRs() []uint {
	out := make([]uint, numPCRs)
	for i := range out {
		out[i] = uint(i)
	}
	return out
}

// readPCRs reads every SHA-256 PCR (a TPM returns at most 8 per call).
func readPCRs(t transport.TPM) (map[int][]byte, error) {
	out := make(map[int][]byte, numPCRs)
	for len(out) < numPCRs {
		var want []uint
		for i := range numPCRs {
			if _, ok := out[i]; !ok {
				want = append(want, uint(i))
			}
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(want...)}}}}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("%w: read PCRs: %w", ErrTPM, err)
		}
		got := 0
		for _, s := range rsp.PCRSelectionOut.PCRSelections {
			if s.Hash != tpm2.TPMAlgSHA256 {
				continue
			}
			for byteIdx, bits := range s.PCRSelect {
				for bit := range 8 {
					if bits&(1<<bit) == 0 {
						continue
					}
					idx := byteIdx*8 + bit
					if got >= len(rsp.PCRValues.Digests) {
						return nil, fmt.Errorf("%w: read PCRs: fewer values than selected", ErrTPM)
					}
					if idx < numPCRs {
						out[idx] = rsp.PCRValues.Digests[got].Buffer
					}
					got++
				}
			}
		}
		if got == 0 {
			return nil, fmt.Errorf("%w: the TPM has no SHA-256 PCR bank", ErrTPM)
		}
	}
	return out, nil
}

// readNV reads a whole NV index, in chunks the TPM accepts.
func readNV(t transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("%w: NV index %#x: %w", ErrTPM, uint32(index), err)
	}
	np, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("%w: NV index %#x: %w", ErrTPM, uint32(index), err)
	}
	if int(np.DataSize) > evidence.MaxHCLSize {
		return nil, fmt.Errorf("%w: NV index %#x holds %d bytes, more than an HCL report may have", ErrTPM, uint32(index), np.DataSize)
	}
	var auth tpm2.AuthHandle
	switch {
	case np.Attributes.OwnerRead:
		auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	case np.Attributes.AuthRead:
		auth = tpm2.AuthHandle{Handle: index, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)}
	default:
		return nil, fmt.Errorf("%w: NV index %#x is readable neither with owner nor with index authorisation", ErrTPM, uint32(index))
	}
	chunk := uint16(nvBufferMax(t))
	out := make([]byte, 0, np.DataSize)
	for off := uint16(0); off < np.DataSize; {
		n := min(chunk, np.DataSize-off)
		rsp, err := tpm2.NVRead{AuthHandle: auth, NVIndex: tpm2.NamedHandle{Handle: index, Name: pub.NVName}, Size: n, Offset: off}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("%w: read NV index %#x at %d: %w", ErrTPM, uint32(index), off, err)
		}
		if len(rsp.Data.Buffer) == 0 {
			return nil, fmt.Errorf("%w: read NV index %#x at %d: no data", ErrTPM, uint32(index), off)
		}
		out = append(out, rsp.Data.Buffer...)
		off += uint16(len(rsp.Data.Buffer))
	}
	return out, nil
}

// nvBufferMax is the TPM's largest NV read, 512 when it does not say.
func nvBufferMax(t transport.TPM) uint32 {
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapTPMProperties, Property: uint32(tpm2.TPMPTNVBufferMax), PropertyCount: 1}.Execute(t)
	if err != nil {
		return 512
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil || len(props.TPMProperty) == 0 || props.TPMProperty[0].Property != tpm2.TPMPTNVBufferMax {
		return 512
	}
	v := props.TPMProperty[0].Value
	if v == 0 || v > 2048 {
		return 512
	}
	return v
}
