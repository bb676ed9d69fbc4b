package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/big"
	"strings"
	"sync"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/eventlog"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/evidence/tdx"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
)

// AKType is the type of a simulated VM's attestation key.
type AKType int

// Attestation key types.
const (
	// AKRSA2048 is what Azure's paravisor uses. Generating one takes tens
	// of milliseconds.
	AKRSA2048 AKType = iota
	// AKECDSAP256 is generated in microseconds: use it for large fleets.
	AKECDSAP256
)

// VMConfig describes a simulated VM.
type VMConfig struct {
	// Platform is evidence.PlatformAzureSNP (default) or evidence.PlatformAzureTDX.
	Platform string
	// ProductLine is the SEV-SNP product line: "Milan" (default) or "Genoa".
	ProductLine string
	// ResourceID is the VM's ARM resource ID; default derived from VMID.
	ResourceID string
	// VMID is the ARM vmId, which the runtime data reports as vmUniqueId;
	// default random.
	VMID string
	// Host selects the simulated physical host (modulo the Authority's
	// Hosts); default derived from VMID.
	Host *int
	// AK is the attestation key type.
	AK AKType
	// OmitVCEK leaves the VCEK out of SNP bundles: verifiers then need the
	// collateral cache or AMD KDS (see Authority.KDS).
	OmitVCEK bool
	// EventLog includes a TCG event log that replays to the quoted PCRs.
	EventLog bool
	// ConsoleEnabled sets the runtime data's console-enabled.
	ConsoleEnabled bool
	// SecureBootDisabled boots without secure boot (runtime data and PCR 7).
	SecureBootDisabled bool
	// Faults are the initial faults; see VM.SetFaults.
	Faults Faults
}

// Faults make a simulated VM produce bad evidence. Each names what a
// verifier or policy must then report.
type Faults struct {
	DebugPolicy      bool // SNP guest policy / TDX TD attributes allow debug: policy.debug_enabled
	LowTCB           bool // outdated TCB (SNP reported TCB, TDX TEE TCB SVN): policy.tcb_too_low
	WrongMeasurement bool // SNP MEASUREMENT / TDX MRTD not the reference: policy.measurement_not_allowed
	UnexpectedBoot   bool // a different boot chain (PCR 4): policy.pcr_mismatch
	WrongVMID        bool // runtime vmUniqueId is not the ARM vmId: identity.vmid_mismatch
	StaleNonce       bool // answers with the quote for the previous challenge: tpm.nonce_mismatch
	BrokenBinding    bool // report data is not the runtime data digest: binding.report_data_mismatch
	BrokenSignature  bool // hardware report signature invalid: snp.signature_invalid / tdx.signature_invalid
	BrokenQuote      bool // TPM quote signature invalid: tpm.signature_invalid
}

// hardwareFaults are the faults baked into the boot-time evidence.
func (f Faults) hardware() Faults {
	return Faults{DebugPolicy: f.DebugPolicy, LowTCB: f.LowTCB, WrongMeasurement: f.WrongMeasurement,
		UnexpectedBoot: f.UnexpectedBoot, WrongVMID: f.WrongVMID, BrokenBinding: f.BrokenBinding, BrokenSignature: f.BrokenSignature}
}

// Challenge is what a verifier sends a VM.
type Challenge struct {
	Nonce []byte
	// ExtraData is the TPM quote's extraData when the quote answers
	// another protocol (key release: keyrelease.Binding); default
	// evidence.ChallengeBinding(Nonce), as Vigil's agent answers a
	// challenge.
	ExtraData []byte
}

// VM is a simulated Azure CVM. Its methods are safe for concurrent use.
type VM struct {
	a        *Authority
	cfg      VMConfig
	host     int
	vmKey    string
	ak       crypto.Signer
	akJWK    hcl.JWK
	akName   []byte
	bootTime time.Time

	mu        sync.Mutex
	faults    Faults
	hw        *hwEvidence
	lastExtra []byte
	lastNonce []byte
}

// hwEvidence is what the paravisor produces at boot (and the VM caches).
type hwEvidence struct {
	faults   Faults
	hcl      []byte
	tdQuote  []byte
	vcekPEM  []byte
	pcrs     map[int][]byte
	eventLog []byte

	// quote and wire, when not nil, encode a challenge's TPM quote and
	// bundle from parts fixed at boot (see answer.go).
	quote *quoteTemplate
	wire  *wireTemplate
}

// NewVM creates a simulated VM with its own attestation key.
func (a *Authority) NewVM(cfg VMConfig) (*VM, error) {
	if cfg.Platform == "" {
		cfg.Platform = evidence.PlatformAzureSNP
	}
	if cfg.Platform != evidence.PlatformAzureSNP && cfg.Platform != evidence.PlatformAzureTDX {
		return nil, fmt.Errorf("sim: platform %q is not %s or %s", cfg.Platform, evidence.PlatformAzureSNP, evidence.PlatformAzureTDX)
	}
	if cfg.ProductLine == "" {
		cfg.ProductLine = "Milan"
	}
	if _, ok := amdProducts[cfg.ProductLine]; !ok {
		return nil, fmt.Errorf("sim: product line %q is not Milan or Genoa", cfg.ProductLine)
	}
	if cfg.VMID == "" {
		cfg.VMID = a.uniqueVMID()
	}
	if cfg.ResourceID == "" {
		cfg.ResourceID = fmt.Sprintf("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/vigil-sim/providers/Microsoft.Compute/virtualMachines/sim-%s", strings.ToLower(cfg.VMID[:8]))
	}
	vm := &VM{a: a, cfg: cfg, vmKey: events.VMKey(cfg.ResourceID), faults: cfg.Faults, bootTime: time.Now()}
	if cfg.Host != nil {
		vm.host = ((*cfg.Host % a.hosts) + a.hosts) % a.hosts
	} else {
		h := fnv.New32a()
		h.Write([]byte(cfg.VMID))
		vm.host = int(h.Sum32() % uint32(a.hosts))
	}
	var err error
	switch cfg.AK {
	case AKRSA2048:
		vm.ak, err = rsa.GenerateKey(rand.Reader, 2048)
	case AKECDSAP256:
		vm.ak, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		err = fmt.Errorf("unknown AK type %d", cfg.AK)
	}
	if err != nil {
		return nil, fmt.Errorf("sim: attestation key: %w", err)
	}
	if vm.akJWK, err = hcl.JWKFromPublicKey(hcl.KidAK, vm.ak.Public(), "sign"); err != nil {
		return nil, err
	}
	nameDigest := sha256.Sum256([]byte(vm.akJWK.N + vm.akJWK.X + vm.akJWK.Y))
	vm.akName = append([]byte{0x00, 0x0b}, nameDigest[:]...)
	if _, err := vm.hardware(); err != nil {
		return nil, err
	}
	return vm, nil
}

// NewFleet creates n VMs from cfg (each with its own VMID, resource ID and
// AK), generating keys in parallel.
func (a *Authority) NewFleet(n int, cfg VMConfig) ([]*VM, error) {
	if cfg.VMID != "" || cfg.ResourceID != "" {
		return nil, errors.New("sim: a fleet config must not fix VMID or ResourceID")
	}
	vms := make([]*VM, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			vms[i], errs[i] = a.NewVM(cfg)
		}()
	}
	wg.Wait()
	return vms, errors.Join(errs...)
}

// uniqueVMID makes a vmId whose name prefix (its first 8 hex digits, which
// name the VM) no VM made by a before has: 20,000 random prefixes of 32
// bits hold two alike one time in 20, 100,000 most of the time.
func (a *Authority) uniqueVMID() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.names == nil {
		a.names = map[string]bool{}
	}
	for {
		id := newGUID()
		if p := id[:8]; !a.names[p] {
			a.names[p] = true
			return id
		}
	}
}

func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return strings.ToUpper(fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]))
}

// ResourceID is the VM's ARM resource ID.
func (vm *VM) ResourceID() string { return vm.cfg.ResourceID }

// VMID is the VM's ARM vmId.
func (vm *VM) VMID() string { return vm.cfg.VMID }

// VMKey is the VM key of the resource ID.
func (vm *VM) VMKey() string { return vm.vmKey }

// Platform is the VM's evidence platform.
func (vm *VM) Platform() string { return vm.cfg.Platform }

// Faults returns the current faults.
func (vm *VM) Faults() Faults {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.faults
}

// SetFaults changes the faults; boot-time evidence is regenerated as if
// the VM had rebooted into the new state.
func (vm *VM) SetFaults(f Faults) {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	vm.faults = f
}

// Respond answers a challenge nonce with a JSON evidence bundle.
func (vm *VM) Respond(nonce []byte) ([]byte, error) {
	return vm.Answer(Challenge{Nonce: nonce})
}

// Answer answers a challenge with a JSON evidence bundle, the bytes
// (*evidence.Bundle).Marshal gives for what Evidence returns. The parts
// fixed at boot (HCL report, VCEK, TD quote, PCRs, event log) are encoded
// once per boot, not per challenge, as a real agent reads them once.
func (vm *VM) Answer(ch Challenge) ([]byte, error) {
	b, hw, err := vm.evidence(ch)
	if err != nil {
		return nil, err
	}
	if hw.wire != nil {
		return hw.wire.encode(b), nil
	}
	return b.Marshal()
}

// Evidence answers a challenge with an evidence bundle.
func (vm *VM) Evidence(ch Challenge) (*evidence.Bundle, error) {
	b, _, err := vm.evidence(ch)
	return b, err
}

func (vm *VM) evidence(ch Challenge) (*evidence.Bundle, *hwEvidence, error) {
	if len(ch.Nonce) > evidence.MaxNonceSize {
		return nil, nil, fmt.Errorf("sim: nonce of %d bytes, want at most %d", len(ch.Nonce), evidence.MaxNonceSize)
	}
	extra := ch.ExtraData
	if extra == nil {
		extra = evidence.ChallengeBinding(ch.Nonce)
	}
	if len(extra) > 64 {
		return nil, nil, fmt.Errorf("sim: extraData of %d bytes exceeds 64", len(extra))
	}
	hw, err := vm.hardware()
	if err != nil {
		return nil, nil, err
	}
	vm.mu.Lock()
	faults := vm.faults
	nonce := ch.Nonce
	if faults.StaleNonce && vm.lastNonce != nil {
		nonce, extra = vm.lastNonce, vm.lastExtra
	}
	vm.lastNonce, vm.lastExtra = append([]byte(nil), ch.Nonce...), append([]byte(nil), extra...)
	vm.mu.Unlock()

	clock := uint64(time.Since(vm.bootTime).Milliseconds())
	var attest []byte
	if hw.quote != nil {
		attest = hw.quote.build(extra, clock)
	} else if attest, err = tpmquote.Build(vm.quoteParams(hw, extra, clock)); err != nil {
		return nil, nil, err
	}
	sig, err := tpmquote.Sign(attest, vm.ak, true)
	if err != nil {
		return nil, nil, err
	}
	if faults.BrokenQuote {
		sig[len(sig)/2] ^= 0x40
	}
	b := &evidence.Bundle{
		Format:      evidence.Format,
		Platform:    vm.cfg.Platform,
		VMKey:       vm.vmKey,
		Nonce:       append([]byte(nil), nonce...),
		CollectedAt: time.Now().UTC(),
		HCLReport:   hw.hcl,
		TDQuote:     hw.tdQuote,
		VCEK:        hw.vcekPEM,
		TPMQuote:    evidence.TPMQuote{Attest: attest, Signature: sig, PCRBank: "sha256", PCRs: hw.pcrs},
		EventLog:    hw.eventLog,
	}
	return b, hw, nil
}

// quoteParams are the TPM quote parameters of a challenge.
func (vm *VM) quoteParams(hw *hwEvidence, extra []byte, clock uint64) tpmquote.Params {
	return tpmquote.Params{
		ExtraData:       extra,
		PCRs:            hw.pcrs,
		QualifiedSigner: vm.akName,
		Clock:           clock,
		ResetCount:      1,
		FirmwareVersion: 0x2020031200120003,
	}
}

// hardware returns the boot-time evidence for the current faults.
func (vm *VM) hardware() (*hwEvidence, error) {
	vm.mu.Lock()
	f := vm.faults.hardware()
	if vm.hw != nil && vm.hw.faults == f {
		hw := vm.hw
		vm.mu.Unlock()
		return hw, nil
	}
	vm.mu.Unlock()
	hw, err := vm.boot(f)
	if err != nil {
		return nil, err
	}
	vm.mu.Lock()
	vm.hw = hw
	vm.mu.Unlock()
	return hw, nil
}

func (vm *VM) runtimeData(f Faults) ([]byte, error) {
	ek, err := hcl.JWKFromPublicKey(hcl.KidEK, vm.a.ek, "encrypt")
	if err != nil {
		return nil, err
	}
	vmid := vm.cfg.VMID
	if f.WrongVMID {
		vmid = newGUID()
	}
	t, fls := true, false
	console, secure := &fls, &t
	if vm.cfg.ConsoleEnabled {
		console = &t
	}
	if vm.cfg.SecureBootDisabled {
		secure = &fls
	}
	return json.Marshal(hcl.RuntimeData{
		Keys: []hcl.JWK{vm.akJWK, ek},
		VMConfiguration: hcl.VMConfiguration{
			ConsoleEnabled: console, SecureBoot: secure, TPMEnabled: &t, TPMPersisted: &t, VMUniqueID: vmid,
		},
		UserData: strings.Repeat("0", 128),
	})
}

func (vm *VM) boot(f Faults) (*hwEvidence, error) {
	hw := &hwEvidence{faults: f}
	rt, err := vm.runtimeData(f)
	if err != nil {
		return nil, err
	}
	reportData := hcl.ReportData(rt)
	if f.BrokenBinding {
		reportData[7] ^= 0x01
	}
	var hwReport []byte
	switch vm.cfg.Platform {
	case evidence.PlatformAzureSNP:
		hwReport, hw.vcekPEM, err = vm.snpReport(f, reportData[:])
	case evidence.PlatformAzureTDX:
		hwReport, hw.tdQuote, err = vm.tdxEvidence(f, reportData[:])
	}
	if err != nil {
		return nil, err
	}
	if vm.cfg.OmitVCEK {
		hw.vcekPEM = nil
	}
	rtype := hcl.ReportTypeSNP
	if vm.cfg.Platform == evidence.PlatformAzureTDX {
		rtype = hcl.ReportTypeTDX
	}
	if hw.hcl, err = hcl.Build(1, rtype, hwReport, rt, 2600); err != nil {
		return nil, err
	}
	log := bootLog(!vm.cfg.SecureBootDisabled, f.UnexpectedBoot)
	hw.pcrs = make(map[int][]byte, tpmquote.NumPCRs)
	for i := range tpmquote.NumPCRs {
		v := make([]byte, 32)
		if i >= 17 && i <= 22 {
			for j := range v {
				v[j] = 0xff
			}
		}
		hw.pcrs[i] = v
	}
	for i, v := range log.PCRs() {
		hw.pcrs[i] = v
	}
	if vm.cfg.EventLog {
		hw.eventLog = log.Bytes()
	}
	vm.prepare(hw)
	return hw, nil
}

// Reference values of healthy simulated VMs.
func simMeasurement(platform string, wrong bool) []byte {
	label := "vigil-sim measurement " + platform
	if wrong {
		label += " (unexpected)"
	}
	d := sha512.Sum384([]byte(label))
	return d[:]
}

func simMRSEAM() []byte {
	d := sha512.Sum384([]byte("vigil-sim TDX module 1.5"))
	return d[:]
}

// bootLog is the measured boot of a simulated VM.
func bootLog(secureBoot, unexpected bool) *eventlog.Builder {
	b := eventlog.NewBuilder(3)
	b.Measure(0, eventlog.EVSCRTMVersion, []byte("Hyper-V UEFI Release v4.1\x00"))
	b.Measure(0, eventlog.EVEFIPlatformFirmwareBlob, []byte("vigil-sim firmware volume"))
	b.SecureBootVariable(secureBoot)
	b.Measure(7, eventlog.EVEFIVariableDriverConfig, []byte("vigil-sim PK KEK db dbx"))
	for pcr := range 8 {
		b.Separator(pcr)
	}
	b.Measure(7, eventlog.EVEFIVariableAuthority, []byte("vigil-sim db: Microsoft UEFI CA 2011"))
	b.Measure(4, eventlog.EVEFIBootServicesApp, []byte("vigil-sim shimx64.efi"))
	b.Measure(4, eventlog.EVEFIBootServicesApp, []byte("vigil-sim grubx64.efi"))
	kernel := "vigil-sim vmlinuz-6.8.0-azure"
	if unexpected {
		kernel = "vigil-sim vmlinuz-6.8.0-azure-unsigned"
	}
	b.Measure(4, eventlog.EVEFIBootServicesApp, []byte(kernel))
	b.Measure(8, eventlog.EVIPL, []byte("linux /vmlinuz root=/dev/sda1 ro"))
	b.Measure(9, eventlog.EVIPL, []byte("vigil-sim initrd.img"))
	return b
}

func (vm *VM) snpReport(f Faults, reportData []byte) ([]byte, []byte, error) {
	p, err := vm.a.product(vm.cfg.ProductLine)
	if err != nil {
		return nil, nil, err
	}
	t := p.goodTCB
	if f.LowTCB {
		t = p.lowTCB
	}
	tcb := evidence.ComposeTCB(p.line, t)
	v, err := vm.a.vcek(p.line, vm.host, tcb)
	if err != nil {
		return nil, nil, err
	}
	policy := uint64(0x3001f) // ABI 0.31, SMT allowed, reserved bit 17
	if f.DebugPolicy {
		policy |= 1 << 19
	}
	reportID := vm.a.derive(32, "report-id", vm.cfg.VMID)
	idMA := make([]byte, 32)
	for i := range idMA {
		idMA[i] = 0xff
	}
	r := &spb.Report{
		Version:          3,
		GuestSvn:         1,
		Policy:           policy,
		FamilyId:         make([]byte, abi.FamilyIDSize),
		ImageId:          make([]byte, abi.ImageIDSize),
		Vmpl:             0,
		SignatureAlgo:    abi.SignEcdsaP384Sha384,
		CurrentTcb:       tcb,
		PlatformInfo:     0x3,
		ReportData:       reportData,
		Measurement:      simMeasurement(evidence.PlatformAzureSNP, f.WrongMeasurement),
		HostData:         make([]byte, abi.HostDataSize),
		IdKeyDigest:      make([]byte, abi.IDKeyDigestSize),
		AuthorKeyDigest:  make([]byte, abi.AuthorKeyDigestSize),
		ReportId:         reportID,
		ReportIdMa:       idMA,
		ReportedTcb:      tcb,
		Cpuid1EaxFms:     abi.FmsToCpuid1Eax(p.family, p.model, p.stepping),
		ChipId:           vm.a.chipID(p.line, vm.host),
		CommittedTcb:     tcb,
		CurrentBuild:     21,
		CurrentMinor:     55,
		CurrentMajor:     1,
		CommittedBuild:   21,
		CommittedMinor:   55,
		CommittedMajor:   1,
		LaunchTcb:        tcb,
		Signature:        make([]byte, abi.SignatureSize),
		LaunchMitVector:  0,
		CurrentMitVector: 0,
	}
	raw, err := abi.ReportToAbiBytes(r)
	if err != nil {
		return nil, nil, err
	}
	d := sha512.Sum384(abi.SignedComponent(raw))
	der, err := v.key.Sign(rand.Reader, d[:], crypto.SHA384)
	if err != nil {
		return nil, nil, err
	}
	rs, ss, err := parseDER(der)
	if err != nil {
		return nil, nil, err
	}
	if err := abi.SetSignature(rs, ss, raw); err != nil {
		return nil, nil, err
	}
	if f.BrokenSignature {
		raw[0x2A0+5] ^= 0x10
	}
	return raw, vcekPEM(p, v), nil
}

func (vm *VM) tdxEvidence(f Faults, reportData []byte) ([]byte, []byte, error) {
	plat, err := vm.a.platform(vm.host)
	if err != nil {
		return nil, nil, err
	}
	attrs := make([]byte, 8)
	if f.DebugPolicy {
		attrs[0] |= 0x01
	}
	svn := goodTEETCBSVN
	if f.LowTCB {
		svn = lowTEETCBSVN
	}
	body := tdx.Body{
		TEETCBSVN:      svn,
		MRSEAM:         simMRSEAM(),
		MRSignerSEAM:   make([]byte, 48),
		SEAMAttributes: make([]byte, 8),
		TDAttributes:   attrs,
		XFAM:           simXFAM,
		MRTD:           simMeasurement(evidence.PlatformAzureTDX, f.WrongMeasurement),
		MRConfigID:     make([]byte, 48),
		MROwner:        make([]byte, 48),
		MROwnerConfig:  make([]byte, 48),
		RTMR:           [4][]byte{make([]byte, 48), make([]byte, 48), make([]byte, 48), make([]byte, 48)},
		ReportData:     reportData,
	}
	var userData [20]byte
	copy(userData[:], vm.a.derive(16, "qe-user-data", vm.host))
	header := tdx.Header(0, uint16(simPCESVN), simQEVendorID, userData)
	bodyRaw := body.Marshal()
	d := sha256.Sum256(append(append([]byte(nil), header...), bodyRaw...))
	sig, err := signRS(plat.attKey, d[:])
	if err != nil {
		return nil, nil, err
	}
	if f.BrokenSignature {
		sig[3] ^= 0x20
	}
	quote, err := tdx.AssembleQuote(header, bodyRaw, sig, plat.attKeyRaw, plat.qeReport, plat.qeSig, plat.qeAuthData, plat.chainPEM)
	if err != nil {
		return nil, nil, err
	}
	mac := vm.a.derive(32, "td-report-mac", vm.cfg.VMID)
	return tdx.BuildTDReport(&body, plat.cpuSVN[:], mac), quote, nil
}

func parseDER(der []byte) (*big.Int, *big.Int, error) {
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, nil, err
	}
	return sig.R, sig.S, nil
}

// goldenPCRs returns the PCR values of a healthy simulated VM.
func goldenPCRs() map[int][]byte { return bootLog(true, false).PCRs() }
