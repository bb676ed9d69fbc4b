package sim

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// JSON shapes of Intel PCS v4 TDX collateral (hex byte strings).
type pcsComponent struct {
	SVN byte `json:"svn"`
}

type pcsTCB struct {
	SGX    []pcsComponent `json:"sgxtcbcomponents,omitempty"`
	PCESVN *uint16        `json:"pcesvn,omitempty"`
	TDX    []pcsComponent `json:"tdxtcbcomponents,omitempty"`
	ISVSVN *uint32        `json:"isvsvn,omitempty"`
}

type pcsLevel struct {
	TCB        pcsTCB   `json:"tcb"`
	TCBDate    string   `json:"tcbDate"`
	TCBStatus  string   `json:"tcbStatus"`
	Advisories []string `json:"advisoryIDs,omitempty"`
}

type pcsModule struct {
	ID             string     `json:"id,omitempty"`
	MRSigner       string     `json:"mrsigner"`
	Attributes     string     `json:"attributes"`
	AttributesMask string     `json:"attributesMask"`
	TCBLevels      []pcsLevel `json:"tcbLevels,omitempty"`
}

type pcsTCBInfo struct {
	ID                      string      `json:"id"`
	Version                 int         `json:"version"`
	IssueDate               time.Time   `json:"issueDate"`
	NextUpdate              time.Time   `json:"nextUpdate"`
	FMSPC                   string      `json:"fmspc"`
	PCEID                   string      `json:"pceId"`
	TCBType                 int         `json:"tcbType"`
	TCBEvaluationDataNumber int         `json:"tcbEvaluationDataNumber"`
	TDXModule               pcsModule   `json:"tdxModule"`
	TDXModuleIdentities     []pcsModule `json:"tdxModuleIdentities"`
	TCBLevels               []pcsLevel  `json:"tcbLevels"`
}

type pcsQEIdentity struct {
	ID                      string     `json:"id"`
	Version                 int        `json:"version"`
	IssueDate               time.Time  `json:"issueDate"`
	NextUpdate              time.Time  `json:"nextUpdate"`
	TCBEvaluationDataNumber int        `json:"tcbEvaluationDataNumber"`
	Miscselect              string     `json:"miscselect"`
	MiscselectMask          string     `json:"miscselectMask"`
	Attributes              string     `json:"attributes"`
	AttributesMask          string     `json:"attributesMask"`
	MRSigner                string     `json:"mrsigner"`
	ISVProdID               uint16     `json:"isvprodid"`
	TCBLevels               []pcsLevel `json:"tcbLevels"`
}

func components(svns []byte) []pcsComponent {
	out := make([]pcsComponent, 16)
	for i := range out {
		if i < len(svns) {
			out[i].SVN = svns[i]
		}
	}
	return out
}

func hexUpper(b []byte) string { return strings.ToUpper(hex.EncodeToString(b)) }

// RevokePCK makes the simulated PCS list simulated TDX host h's PCK
// certificate in its CRL.
func (a *Authority) RevokePCK(h int) error {
	p, err := a.platform(((h % a.hosts) + a.hosts) % a.hosts)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revoked == nil {
		a.revoked = make(map[string]bool)
	}
	a.revoked[p.pck.SerialNumber.String()] = true
	return nil
}

// signedJSON encodes {"<member>": <doc>, "signature": hex(r||s)} signed by the
// TCB signing key over the member's bytes.
func (a *Authority) signedJSON(ca *intelCA, member string, doc any) ([]byte, error) {
	raw, err := json.Marshal(doc)
	if err != nil {
		return nil, err
	}
	d := sha256.Sum256(raw)
	sig, err := signRS(ca.tcbKey, d[:])
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, `{"%s":%s,"signature":"%s"}`, member, raw, hex.EncodeToString(sig))
	return out.Bytes(), nil
}

// serveSignedJSON answers with doc signed as member (see signedJSON), naming
// the TCB signer's chain in the header chainHeader, as PCS does.
func (a *Authority) serveSignedJSON(w http.ResponseWriter, ca *intelCA, member string, doc any, chainHeader string) {
	body, err := a.signedJSON(ca, member, doc)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set(chainHeader, issuerChain(ca.tcbSigner, ca.root))
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(body)
}

func issuerChain(certs ...*x509.Certificate) string {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return url.QueryEscape(b.String())
}

// PCS returns an http.Handler speaking Intel PCS v4's TDX collateral
// interface for the simulated platforms: TCB info, QE identity and the PCK
// CRL. Point evidence.Config.PCSURL at it with TDXCollateral set. Healthy
// simulated TDX VMs are UpToDate; the LowTCB fault makes them OutOfDate.
func (a *Authority) PCS() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /tdx/certification/v4/tcb", func(w http.ResponseWriter, r *http.Request) {
		ca, err := a.intelCA()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if !strings.EqualFold(r.URL.Query().Get("fmspc"), hex.EncodeToString(simFMSPC)) {
			http.Error(w, "unknown fmspc", http.StatusNotFound)
			return
		}
		plat, err := a.platform(0)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		now := time.Now().UTC().Truncate(time.Second)
		good, old := uint16(simPCESVN), uint16(0)
		modGood, modOld := uint32(goodTEETCBSVN[0]), uint32(0)
		info := pcsTCBInfo{
			ID: "TDX", Version: 3, IssueDate: now.Add(-time.Hour), NextUpdate: now.Add(30 * 24 * time.Hour),
			FMSPC: hexUpper(simFMSPC), PCEID: hexUpper(simPCEID), TCBEvaluationDataNumber: 17,
			TDXModule: pcsModule{MRSigner: hexUpper(make([]byte, 48)), Attributes: "0000000000000000", AttributesMask: "FFFFFFFFFFFFFFFF"},
			TDXModuleIdentities: []pcsModule{{
				ID: fmt.Sprintf("TDX_%02X", goodTEETCBSVN[1]), MRSigner: hexUpper(make([]byte, 48)),
				Attributes: "0000000000000000", AttributesMask: "FFFFFFFFFFFFFFFF",
				TCBLevels: []pcsLevel{
					{TCB: pcsTCB{ISVSVN: &modGood}, TCBDate: "2025-01-15T00:00:00Z", TCBStatus: "UpToDate"},
					{TCB: pcsTCB{ISVSVN: &modOld}, TCBDate: "2023-08-09T00:00:00Z", TCBStatus: "OutOfDate", Advisories: []string{"INTEL-SA-00960"}},
				},
			}},
			TCBLevels: []pcsLevel{
				{TCB: pcsTCB{SGX: components(plat.cpuSVN[:]), PCESVN: &good, TDX: components(goodTEETCBSVN)}, TCBDate: "2025-01-15T00:00:00Z", TCBStatus: "UpToDate"},
				{TCB: pcsTCB{SGX: components(nil), PCESVN: &old, TDX: components(nil)}, TCBDate: "2023-08-09T00:00:00Z", TCBStatus: "OutOfDate", Advisories: []string{"INTEL-SA-00837"}},
			},
		}
		a.serveSignedJSON(w, ca, "tcbInfo", info, "TCB-Info-Issuer-Chain")
	})
	mux.HandleFunc("GET /tdx/certification/v4/qe/identity", func(w http.ResponseWriter, r *http.Request) {
		ca, err := a.intelCA()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		now := time.Now().UTC().Truncate(time.Second)
		good, old := uint32(simQESVN), uint32(0)
		attrs := make([]byte, 16)
		attrs[0] = simQEAttrs[0]
		qe := pcsQEIdentity{
			ID: "TD_QE", Version: 2, IssueDate: now.Add(-time.Hour), NextUpdate: now.Add(30 * 24 * time.Hour),
			TCBEvaluationDataNumber: 17, Miscselect: "00000000", MiscselectMask: "FFFFFFFF",
			Attributes: hexUpper(attrs), AttributesMask: "FBFFFFFFFFFFFFFF0000000000000000",
			MRSigner: hexUpper(qeMRSigner(a)), ISVProdID: simQEProdID,
			TCBLevels: []pcsLevel{
				{TCB: pcsTCB{ISVSVN: &good}, TCBDate: "2025-01-15T00:00:00Z", TCBStatus: "UpToDate"},
				{TCB: pcsTCB{ISVSVN: &old}, TCBDate: "2023-08-09T00:00:00Z", TCBStatus: "OutOfDate"},
			},
		}
		a.serveSignedJSON(w, ca, "enclaveIdentity", qe, "SGX-Enclave-Identity-Issuer-Chain")
	})
	mux.HandleFunc("GET /sgx/certification/v4/pckcrl", func(w http.ResponseWriter, r *http.Request) {
		ca, err := a.intelCA()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if r.URL.Query().Get("ca") != "platform" {
			http.Error(w, "only ca=platform is simulated", http.StatusNotFound)
			return
		}
		now := time.Now().UTC().Truncate(time.Second)
		a.mu.Lock()
		var revoked []x509.RevocationListEntry
		for serial := range a.revoked {
			n, _ := new(big.Int).SetString(serial, 10)
			revoked = append(revoked, x509.RevocationListEntry{SerialNumber: n, RevocationTime: now.Add(-time.Minute)})
		}
		a.mu.Unlock()
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
			Number: big.NewInt(now.Unix()), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(30 * 24 * time.Hour),
			RevokedCertificateEntries: revoked,
		}, ca.inter, deterministicSigner{ca.interKey})
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("SGX-PCK-CRL-Issuer-Chain", issuerChain(ca.inter, ca.root))
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(der)
	})
	return mux
}
