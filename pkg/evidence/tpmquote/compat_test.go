package tpmquote_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm-tools/client"
	"github.com/google/go-tpm-tools/simulator"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpmutil"

	"github.com/vigil-cc/vigil/pkg/evidence/eventlog"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
)

// TestTPMSimulatorQuote checks the quote verifier against a real TPM: the
// Microsoft reference TPM in go-tpm-tools' simulator. PCRs are extended as
// a simulated boot's event log says, so the log's replay is checked against
// the TPM's own PCR values too.
func TestTPMSimulatorQuote(t *testing.T) {
	sim, err := simulator.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()

	log := eventlog.NewBuilder(0)
	log.Measure(0, eventlog.EVSCRTMVersion, []byte("compat firmware"))
	log.SecureBootVariable(true)
	log.Measure(4, eventlog.EVEFIBootServicesApp, []byte("compat kernel"))
	for pcr := range 8 {
		log.Separator(pcr)
	}
	parsed, err := eventlog.Parse(log.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range parsed.Events {
		if err := legacy.PCRExtend(sim, tpmutil.Handle(e.PCR), legacy.AlgSHA256, e.SHA256, ""); err != nil {
			t.Fatal(err)
		}
	}

	ak, err := client.AttestationKeyRSA(sim)
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	nonce := sha256.Sum256([]byte("vigil compat nonce"))
	sel := client.FullPcrSel(legacy.AlgSHA256)
	pq, err := ak.Quote(sel, nonce[:])
	if err != nil {
		t.Fatal(err)
	}
	pcrs := make(map[int][]byte, len(pq.GetPcrs().GetPcrs()))
	for i, v := range pq.GetPcrs().GetPcrs() {
		pcrs[int(i)] = v
	}

	q, err := tpmquote.Parse(pq.GetQuote(), pq.GetRawSig())
	if err != nil {
		t.Fatal(err)
	}
	if q.Signature.Bare || q.Signature.Alg != tpm2.TPMAlgRSASSA {
		t.Fatalf("signature %+v, want a TPMT_SIGNATURE with RSASSA", q.Signature)
	}
	if err := q.VerifySignature(ak.PublicKey()); err != nil {
		t.Fatalf("genuine TPM quote rejected: %v", err)
	}
	if err := q.CheckExtraData(nonce[:]); err != nil {
		t.Fatalf("nonce rejected: %v", err)
	}
	if err := q.CheckPCRs(tpm2.TPMAlgSHA256, pcrs); err != nil {
		t.Fatalf("PCRs rejected: %v", err)
	}
	if err := parsed.Check(pcrs); err != nil {
		t.Fatalf("event log does not replay to the TPM's PCRs: %v", err)
	}

	// A changed nonce is rejected.
	changed := bytes.Clone(nonce[:])
	changed[0] ^= 1
	if err := q.CheckExtraData(changed); !errors.Is(err, tpmquote.ErrExtraData) {
		t.Fatalf("changed nonce: %v", err)
	}
	// So is the quote with its extraData changed (the signature breaks).
	attest := bytes.Clone(pq.GetQuote())
	i := bytes.Index(attest, nonce[:])
	if i < 0 {
		t.Fatal("nonce not found in TPMS_ATTEST")
	}
	attest[i] ^= 1
	q2, err := tpmquote.Parse(attest, pq.GetRawSig())
	if err != nil {
		t.Fatal(err)
	}
	if err := q2.VerifySignature(ak.PublicKey()); !errors.Is(err, tpmquote.ErrSignature) {
		t.Fatalf("quote with changed extraData: %v", err)
	}
	// And so is a changed PCR value.
	pcrs[4] = bytes.Repeat([]byte{0xAA}, 32)
	if err := q.CheckPCRs(tpm2.TPMAlgSHA256, pcrs); !errors.Is(err, tpmquote.ErrPCRDigest) {
		t.Fatalf("changed PCR: %v", err)
	}
}
