package agent_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	sevtest "github.com/google/go-sev-guest/testing"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	tpmsim "github.com/google/go-tpm/tpm2/transport/simulator"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/hcl"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/agent"
)

// azureVTPM is go-tpm-tools' TPM simulator made to look like the vTPM of an
// Azure SEV-SNP Confidential VM: an RSA attestation key at 0x81000003, an
// HCL report in NV index 0x01400001 whose runtime data carries that key
// and whose SNP report (signed by a go-sev-guest test VCEK) binds the
// runtime data, and the VCEK served by an instance metadata service.
type azureVTPM struct {
	tpm      transport.TPMCloser
	vmID     string
	hcl      []byte
	roots    *evidence.TestRoots
	vcekPEM  string
	chainPEM string
	imds     *httptest.Server
	fake     *fakeIMDS
}

// shared is a TPM that its users cannot close: the simulator is one per
// process and closing it would wipe the NV index and the AK.
type shared struct{ transport.TPM }

func (shared) Close() error { return nil }

func (v *azureVTPM) open() (transport.TPMCloser, error) { return shared{v.tpm}, nil }

var milanTCB = kds.TCBParts{BlSpl: 4, TeeSpl: 0, SnpSpl: 24, UcodeSpl: 219}

func newAzureVTPM(t *testing.T) *azureVTPM {
	t.Helper()
	tpm, err := tpmsim.OpenSimulator()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tpm.Close() })
	v := &azureVTPM{tpm: tpm, vmID: "3A7C2B1E-5D4F-4E6A-9B8C-0D1E2F3A4B5C"}

	// The attestation key, as Azure's paravisor provisions it.
	ak, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InPublic: tpm2.New2B(tpm2.TPMTPublic{
			Type:    tpm2.TPMAlgRSA,
			NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
				UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme: tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)}),
		}),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("create AK: %v", err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: ak.ObjectHandle, Name: ak.Name},
		PersistentHandle: agent.AKHandle,
	}).Execute(tpm); err != nil {
		t.Fatalf("persist AK: %v", err)
	}
	_, _ = tpm2.FlushContext{FlushHandle: ak.ObjectHandle}.Execute(tpm)
	outPub, err := ak.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	akPub, err := tpm2.Pub(*outPub)
	if err != nil {
		t.Fatal(err)
	}
	// Measured boot leaves non-zero PCRs.
	for _, pcr := range []int{0, 4, 7, 9} {
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: bytes.Repeat([]byte{byte(pcr + 1)}, 32)}}},
		}).Execute(tpm); err != nil {
			t.Fatal(err)
		}
	}

	// A go-sev-guest test chain and a VCEK for one chip.
	signer, err := (&sevtest.AmdSignerBuilder{Keys: sevtest.DefaultAmdKeys(), ProductName: "Milan-B1",
		ArkCreationTime: time.Unix(1700000000, 0), AskCreationTime: time.Unix(1700000000, 0), AsvkCreationTime: time.Unix(1700000000, 0),
		VcekCreationTime: time.Unix(1700000000, 0), VlekCreationTime: time.Unix(1700000000, 0)}).TestOnlyCertChain()
	if err != nil {
		t.Fatal(err)
	}
	chipID := bytes.Repeat([]byte{0xc1}, abi.ChipIDSize)
	vcekKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(0x7e57),
		Subject: pkix.Name{CommonName: "SEV-VCEK", SerialNumber: "7e57", Organization: []string{"Advanced Micro Devices"},
			Country: []string{"US"}, OrganizationalUnit: []string{"Engineering"}, Locality: []string{"Santa Clara"}, Province: []string{"CA"}},
		NotBefore:          time.Unix(1700000000, 0),
		NotAfter:           time.Unix(1700000000, 0).Add(20 * 365 * 24 * time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions:    sevtest.CustomExtensions(milanTCB, chipID, "", "Milan-B1"),
	}, signer.Ask, vcekKey.Public(), signer.Keys.Ask)
	if err != nil {
		t.Fatal(err)
	}
	v.vcekPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	v.chainPEM = string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ask.Raw})) +
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: signer.Ark.Raw}))
	v.roots = &evidence.TestRoots{AMD: []evidence.AMDRoots{{ProductLine: "Milan", ARK: signer.Ark, ASK: signer.Ask}}}

	// The runtime data carries the TPM's AK; the SNP report binds it.
	akJWK, err := hcl.JWKFromPublicKey(hcl.KidAK, akPub, "sign")
	if err != nil {
		t.Fatal(err)
	}
	ekKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ekJWK, err := hcl.JWKFromPublicKey(hcl.KidEK, ekKey.Public(), "encrypt")
	if err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	rt, err := json.Marshal(hcl.RuntimeData{
		Keys:            []hcl.JWK{akJWK, ekJWK},
		VMConfiguration: hcl.VMConfiguration{ConsoleEnabled: &no, SecureBoot: &yes, TPMEnabled: &yes, TPMPersisted: &yes, VMUniqueID: v.vmID},
		UserData:        "00000000",
	})
	if err != nil {
		t.Fatal(err)
	}
	reportData := hcl.ReportData(rt)
	tcbVersion, err := kds.ComposeTCBParts(milanTCB)
	if err != nil {
		t.Fatal(err)
	}
	tcb := uint64(tcbVersion)
	report := &spb.Report{
		Version: 3, GuestSvn: 1, Policy: 0x3001f, FamilyId: make([]byte, abi.FamilyIDSize), ImageId: make([]byte, abi.ImageIDSize),
		SignatureAlgo: abi.SignEcdsaP384Sha384, CurrentTcb: tcb, PlatformInfo: 0x3, ReportData: reportData[:],
		Measurement: bytes.Repeat([]byte{0x5a}, abi.MeasurementSize), HostData: make([]byte, abi.HostDataSize),
		IdKeyDigest: make([]byte, abi.IDKeyDigestSize), AuthorKeyDigest: make([]byte, abi.AuthorKeyDigestSize),
		ReportId: bytes.Repeat([]byte{1}, 32), ReportIdMa: bytes.Repeat([]byte{0xff}, 32), ReportedTcb: tcb,
		Cpuid1EaxFms: abi.FmsToCpuid1Eax(0x19, 0x01, 1), ChipId: chipID, CommittedTcb: tcb,
		CurrentBuild: 21, CurrentMinor: 55, CurrentMajor: 1, CommittedBuild: 21, CommittedMinor: 55, CommittedMajor: 1,
		LaunchTcb: tcb, Signature: make([]byte, abi.SignatureSize),
	}
	raw, err := abi.ReportToAbiBytes(report)
	if err != nil {
		t.Fatal(err)
	}
	digest := sha512.Sum384(abi.SignedComponent(raw))
	sig, err := vcekKey.Sign(rand.Reader, digest[:], crypto.SHA384)
	if err != nil {
		t.Fatal(err)
	}
	var rs struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(sig, &rs); err != nil {
		t.Fatal(err)
	}
	if err := abi.SetSignature(rs.R, rs.S, raw); err != nil {
		t.Fatal(err)
	}
	// Azure's NV index holds 2600 bytes; the reference TPM's largest NV
	// index is 2048, still enough for this runtime data.
	if v.hcl, err = hcl.Build(1, hcl.ReportTypeSNP, raw, rt, 2048); err != nil {
		t.Fatal(err)
	}
	v.writeNV(t, v.hcl)

	v.fake = &fakeIMDS{compute: agent.Compute{ResourceID: "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/cvm-sim", VMID: v.vmID},
		vcekPEM: v.vcekPEM, chainPEM: v.chainPEM}
	v.imds = httptest.NewServer(v.fake)
	t.Cleanup(v.imds.Close)
	return v
}

// writeNV (re)defines the HCL report NV index with report as contents.
func (v *azureVTPM) writeNV(t *testing.T, report []byte) {
	t.Helper()
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	if pub, err := (tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(agent.HCLReportIndex)}).Execute(v.tpm); err == nil {
		if _, err := (tpm2.NVUndefineSpace{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(agent.HCLReportIndex), Name: pub.NVName}}).Execute(v.tpm); err != nil {
			t.Fatal(err)
		}
	}
	def := tpm2.NVDefineSpace{
		AuthHandle: owner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex:    tpm2.TPMHandle(agent.HCLReportIndex),
			NameAlg:    tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, AuthRead: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
			DataSize:   uint16(len(report)),
		}),
	}
	if _, err := def.Execute(v.tpm); err != nil {
		t.Fatalf("define NV: %v", err)
	}
	pub, err := (tpm2.NVReadPublic{NVIndex: tpm2.TPMHandle(agent.HCLReportIndex)}).Execute(v.tpm)
	if err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(report); off += 512 {
		end := min(off+512, len(report))
		if _, err := (tpm2.NVWrite{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: tpm2.TPMHandle(agent.HCLReportIndex), Name: pub.NVName},
			Data: tpm2.TPM2BMaxNVBuffer{Buffer: report[off:end]}, Offset: uint16(off)}).Execute(v.tpm); err != nil {
			t.Fatalf("write NV at %d: %v", off, err)
		}
	}
}

func (v *azureVTPM) source() *agent.AzureTPM {
	return agent.NewAzureTPM(agent.AzureTPMConfig{Open: v.open, IMDS: agent.NewIMDS(v.imds.URL), EventLogPath: "-", VMKey: events.VMKey(v.fake.compute.ResourceID)})
}

func (v *azureVTPM) verify(t *testing.T, bundle, nonce []byte) events.Verdict {
	t.Helper()
	ver, err := evidence.NewVerifier(evidence.Config{TestRoots: v.roots, Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	verdict, _, _ := appraise.Evidence(context.Background(), ver, bundle, evidence.Expect{Nonce: nonce, VMID: v.vmID, VMKey: events.VMKey(v.fake.compute.ResourceID)}, appraise.DefaultPolicy(), appraise.Options{})
	return verdict
}

func codes(v events.Verdict) []string {
	var out []string
	for _, r := range v.Reasons {
		out = append(out, r.Code)
	}
	return out
}

// TestAzureBackendOnSimulatedVTPM runs the Azure backend against the
// simulated vTPM (one test: the simulator is one per process).
func TestAzureBackendOnSimulatedVTPM(t *testing.T) {
	v := newAzureVTPM(t)
	src := v.source()
	ctx := ctxT(t, 60*time.Second)

	nonce := evidence.NewNonce()
	bundle, err := src.Evidence(ctx, nonce, evidence.ChallengeBinding(nonce))
	if err != nil {
		t.Fatal(err)
	}
	b, err := evidence.ParseBundle(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if b.Platform != evidence.PlatformAzureSNP || !bytes.Equal(b.HCLReport, v.hcl) || len(b.TPMQuote.PCRs) != 24 || b.TPMQuote.PCRBank != "sha256" || !strings.Contains(string(b.VCEK), "BEGIN CERTIFICATE") {
		t.Fatalf("bundle: platform %s, HCL report as written %v, %d PCRs in %s, VCEK %v", b.Platform, bytes.Equal(b.HCLReport, v.hcl), len(b.TPMQuote.PCRs), b.TPMQuote.PCRBank, len(b.VCEK) > 0)
	}
	if verdict := v.verify(t, bundle, nonce); verdict.Status != events.VerdictAffirming || verdict.VMID != v.vmID || !strings.EqualFold(verdict.ClaimedVMID, v.vmID) {
		t.Fatalf("verdict %s %v (vmId %s, claimed %s)", verdict.Status, verdict.Reasons, verdict.VMID, verdict.ClaimedVMID)
	}

	t.Run("another nonce fails", func(t *testing.T) {
		verdict := v.verify(t, bundle, evidence.NewNonce())
		if verdict.Status != events.VerdictContraindicated || !slices.ContainsFunc(codes(verdict), func(c string) bool { return strings.HasPrefix(c, "tpm.nonce") || strings.HasPrefix(c, "freshness") }) {
			t.Fatalf("verdict %s %v, want a nonce failure", verdict.Status, verdict.Reasons)
		}
	})

	t.Run("concurrent challenges are serialised", func(t *testing.T) {
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := evidence.NewNonce()
				out, err := src.Evidence(ctx, n, evidence.ChallengeBinding(n))
				if err != nil {
					errs <- err
					return
				}
				if verdict := v.verify(t, out, n); verdict.Status != events.VerdictAffirming {
					t.Errorf("concurrent challenge: %s %v", verdict.Status, verdict.Reasons)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("a deadline that passes while waiting for the TPM", func(t *testing.T) {
		dctx, cancel := context.WithTimeout(ctx, time.Nanosecond)
		defer cancel()
		time.Sleep(time.Millisecond)
		n := evidence.NewNonce()
		if _, err := src.Evidence(dctx, n, evidence.ChallengeBinding(n)); err == nil {
			t.Fatal("evidence after the deadline")
		}
	})

	t.Run("a changed NV report fails", func(t *testing.T) {
		for _, tc := range []struct {
			name   string
			offset int
			code   string
		}{
			{"runtime data", hcl.RuntimeDataStart + 10, evidence.ReasonBindingMismatch},
			{"hardware report", hcl.HeaderSize + 0x90, evidence.ReasonSNPSignatureInvalid},
		} {
			t.Run(tc.name, func(t *testing.T) {
				bad := bytes.Clone(v.hcl)
				bad[tc.offset] ^= 0x01
				v.writeNV(t, bad)
				defer v.writeNV(t, v.hcl)
				n := evidence.NewNonce()
				out, err := src.Evidence(ctx, n, evidence.ChallengeBinding(n))
				if err != nil {
					t.Fatal(err)
				}
				verdict := v.verify(t, out, n)
				if verdict.Status != events.VerdictContraindicated || !slices.Contains(codes(verdict), tc.code) {
					t.Fatalf("verdict %s %v, want %s", verdict.Status, verdict.Reasons, tc.code)
				}
			})
		}
	})

	t.Run("key release binding", func(t *testing.T) {
		nonce := evidence.NewNonce()
		extra := keyrelease.Binding(nonce, keyrelease.DefaultSuite, []byte("ephemeral public key"))
		out, err := src.Evidence(ctx, nonce, extra)
		if err != nil {
			t.Fatal(err)
		}
		ver, err := evidence.NewVerifier(evidence.Config{TestRoots: v.roots, Offline: true})
		if err != nil {
			t.Fatal(err)
		}
		res, err := ver.Verify(ctx, out, evidence.Expect{Nonce: nonce, ExtraData: extra, VMID: v.vmID})
		if err != nil || !res.Genuine {
			t.Fatalf("bound evidence: %v %v", err, res.Failures)
		}
	})

	t.Run("TDX: the TD report goes to the quote endpoint", func(t *testing.T) {
		tdReport := bytes.Repeat([]byte{0x7d}, hcl.TDReportSize)
		rt := []byte(`{"keys":[],"vm-configuration":{"vmUniqueId":"x"}}`)
		tdHCL, err := hcl.Build(1, hcl.ReportTypeTDX, tdReport, rt, 2048)
		if err != nil {
			t.Fatal(err)
		}
		v.writeNV(t, tdHCL)
		defer v.writeNV(t, v.hcl)
		v.fake.tdQuote = []byte("the quoting enclave's TD quote")
		n := evidence.NewNonce()
		out, err := src.Evidence(ctx, n, evidence.ChallengeBinding(n))
		if err != nil {
			t.Fatal(err)
		}
		b, err := evidence.ParseBundle(out)
		if err != nil {
			t.Fatal(err)
		}
		sent := v.fake.lastTD.Load()
		if b.Platform != evidence.PlatformAzureTDX || !bytes.Equal(b.TDQuote, v.fake.tdQuote) || sent == nil || !bytes.Equal(*sent, tdReport) {
			t.Fatalf("platform %s, quote %q, TD report sent %v", b.Platform, b.TDQuote, sent != nil && bytes.Equal(*sent, tdReport))
		}
	})

	t.Run("served by the agent", func(t *testing.T) {
		srv := natstestStart(t)
		c := connect(t, srv)
		actx, cancel := context.WithCancel(ctx)
		defer cancel()
		ready := make(chan struct{})
		done := make(chan error, 1)
		go func() {
			done <- agent.Run(actx, agent.Config{Options: service.Options{Conn: c, Ready: sync.OnceFunc(func() { close(ready) })}, IMDS: agent.NewIMDS(v.imds.URL), Source: src})
		}()
		select {
		case <-ready:
		case err := <-done:
			t.Fatal(err)
		}
		vm := events.VMKey(v.fake.compute.ResourceID)
		ver, err := evidence.NewVerifier(evidence.Config{TestRoots: v.roots, Offline: true})
		if err != nil {
			t.Fatal(err)
		}
		verdict, err := challenge(ctx, c, ver, appraise.DefaultPolicy(), vm, v.vmID, 10*time.Second)
		if err != nil || verdict.Status != events.VerdictAffirming {
			t.Fatalf("challenge over NATS: %v %s %v", err, verdict.Status, verdict.Reasons)
		}
		cancel()
		<-done
	})
}

func natstestStart(t *testing.T) string { return natstest.Start(t).URL() }

// TestExpiredChallengeStartsNoTPMSession: a challenge whose deadline has
// passed before the TPM is free is refused without opening a session,
// even when the TPM is free at once (a session started for it would hold
// the TPM, and run beside whatever comes next, for nothing).
func TestExpiredChallengeStartsNoTPMSession(t *testing.T) {
	var opened atomic.Int64
	src := agent.NewAzureTPM(agent.AzureTPMConfig{
		Open:         func() (transport.TPMCloser, error) { opened.Add(1); return nil, errors.New("no TPM here") },
		IMDS:         agent.NewIMDS("http://127.0.0.1:1"),
		EventLogPath: "-",
		VMKey:        "vm",
	})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 2000 {
		n := evidence.NewNonce()
		if _, err := src.Evidence(ctx, n, evidence.ChallengeBinding(n)); !errors.Is(err, context.Canceled) {
			t.Fatalf("evidence for an expired challenge: %v, want the deadline's error", err)
		}
	}
	if n := opened.Load(); n != 0 {
		t.Fatalf("%d TPM sessions started for 2000 expired challenges", n)
	}
}
