package sim

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-sev-guest/abi"
	"github.com/google/go-sev-guest/kds"
	sevtest "github.com/google/go-sev-guest/testing"

	"github.com/vigil-cc/vigil/pkg/evidence"
)

// amdProduct is one product line of the simulated AMD: go-sev-guest's test
// ARK and ASK (with their keys: the ARK signs the CRL), and VCEKs of
// simulated chips.
type amdProduct struct {
	line, name              string
	family, model, stepping byte
	goodTCB, lowTCB         evidence.SNPTCB
	ark, ask                *x509.Certificate
	arkKey, askKey          *rsa.PrivateKey
	vceks                   map[vcekID]*vcek
}

type vcekID struct {
	host int
	tcb  uint64
}

type vcek struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

var amdProducts = map[string]amdProduct{
	"Milan": {line: "Milan", name: "Milan-B1", family: 0x19, model: 0x01, stepping: 1,
		goodTCB: evidence.SNPTCB{BootLoader: 4, TEE: 0, SNP: 24, Microcode: 219},
		lowTCB:  evidence.SNPTCB{BootLoader: 3, TEE: 0, SNP: 8, Microcode: 115}},
	"Genoa": {line: "Genoa", name: "Genoa-B1", family: 0x19, model: 0x11, stepping: 1,
		goodTCB: evidence.SNPTCB{BootLoader: 9, TEE: 0, SNP: 23, Microcode: 72},
		lowTCB:  evidence.SNPTCB{BootLoader: 7, TEE: 0, SNP: 14, Microcode: 62}},
}

// product returns the product line's chain, building it on first use.
func (a *Authority) product(line string) (*amdProduct, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.amd[line]; ok {
		return p, nil
	}
	tmpl, ok := amdProducts[line]
	if !ok {
		return nil, fmt.Errorf("sim: unsupported SEV-SNP product line %q (want Milan or Genoa)", line)
	}
	b := &sevtest.AmdSignerBuilder{
		Keys:             sevtest.DefaultAmdKeys(),
		ProductName:      tmpl.name,
		CSPID:            "vigil-sim",
		ArkCreationTime:  certEpoch,
		AskCreationTime:  certEpoch,
		AsvkCreationTime: certEpoch,
		VcekCreationTime: certEpoch,
		VlekCreationTime: certEpoch,
	}
	s, err := b.TestOnlyCertChain()
	if err != nil {
		return nil, fmt.Errorf("sim: go-sev-guest test chain for %s: %w", line, err)
	}
	p := tmpl
	p.ark, p.ask, p.arkKey, p.askKey = s.Ark, s.Ask, s.Keys.Ark, s.Keys.Ask
	p.vceks = make(map[vcekID]*vcek)
	a.amd[line] = &p
	return &p, nil
}

// chipID is the CHIP_ID of simulated host h of a product line.
func (a *Authority) chipID(line string, host int) []byte {
	return a.derive(abi.ChipIDSize, "chip", line, host)
}

func amdName(cn, serial string) pkix.Name {
	return pkix.Name{
		Organization:       []string{"Advanced Micro Devices"},
		Country:            []string{"US"},
		OrganizationalUnit: []string{"Engineering"},
		Locality:           []string{"Santa Clara"},
		Province:           []string{"CA"},
		SerialNumber:       serial,
		CommonName:         cn,
	}
}

// vcek returns the VCEK of a simulated chip at a TCB, creating it on first use.
func (a *Authority) vcek(line string, host int, tcb uint64) (*vcek, error) {
	p, err := a.product(line)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	id := vcekID{host, tcb}
	if v, ok := p.vceks[id]; ok {
		return v, nil
	}
	key := a.deriveKey(elliptic.P384(), "vcek", line, host, tcb)
	parts := kds.DecomposeTCBVersion(kds.TCBVersion(tcb))
	serial := a.vcekSerial(line, host, tcb)
	tmplCert := &x509.Certificate{
		SerialNumber:       serial,
		Subject:            amdName("SEV-VCEK", fmt.Sprintf("%x", serial)),
		NotBefore:          certEpoch,
		NotAfter:           certEpoch.Add(25 * 365 * 24 * time.Hour),
		SignatureAlgorithm: x509.SHA384WithRSAPSS,
		ExtraExtensions:    sevtest.CustomExtensions(parts, a.chipID(line, host), "", p.name),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmplCert, p.ask, key.Public(), p.askKey)
	if err != nil {
		return nil, fmt.Errorf("sim: VCEK: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	v := &vcek{key: key, cert: cert}
	p.vceks[id] = v
	return v, nil
}

// vcekSerial is the serial number of the VCEK of a simulated chip at a TCB.
func (a *Authority) vcekSerial(line string, host int, tcb uint64) *big.Int {
	return new(big.Int).SetBytes(a.derive(8, "vcek-serial", line, host, tcb))
}

// hostByChipID finds the simulated host with a chip ID.
func (a *Authority) hostByChipID(line string, chipID []byte) (int, bool) {
	for h := range a.hosts {
		if string(a.chipID(line, h)) == string(chipID) {
			return h, true
		}
	}
	return 0, false
}

// RevokeVCEK makes the simulated KDS list the VCEKs of simulated SEV-SNP
// host h (every product line, the healthy and the low TCB) in its CRLs.
func (a *Authority) RevokeVCEK(h int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revokedVCEKs == nil {
		a.revokedVCEKs = make(map[int]time.Time)
	}
	a.revokedVCEKs[((h%a.hosts)+a.hosts)%a.hosts] = time.Now().UTC().Truncate(time.Second)
}

// RevokeASK makes the simulated KDS list the ASK of a product line (Milan,
// Genoa) in that line's CRL, revoking every VCEK it signed.
func (a *Authority) RevokeASK(line string) error {
	if _, err := a.product(line); err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.revokedASKs == nil {
		a.revokedASKs = make(map[string]time.Time)
	}
	a.revokedASKs[line] = time.Now().UTC().Truncate(time.Second)
	return nil
}

// crlNextUpdate is how long a CRL of the simulated KDS is valid.
const crlNextUpdate = 7 * 24 * time.Hour

// amdCRL returns the DER CRL of a product line, signed by its ARK with
// RSASSA-PSS SHA-384 as AMD KDS signs it, listing the revoked ASK and VCEKs.
func (a *Authority) amdCRL(p *amdProduct) ([]byte, error) {
	now := time.Now().UTC().Truncate(time.Second)
	a.mu.Lock()
	var revoked []x509.RevocationListEntry
	if t, ok := a.revokedASKs[p.line]; ok {
		revoked = append(revoked, x509.RevocationListEntry{SerialNumber: p.ask.SerialNumber, RevocationTime: t})
	}
	for h, t := range a.revokedVCEKs {
		serials := map[string]*big.Int{}
		for _, tcb := range []evidence.SNPTCB{p.goodTCB, p.lowTCB} {
			n := a.vcekSerial(p.line, h, evidence.ComposeTCB(p.line, tcb))
			serials[n.String()] = n
		}
		for id, v := range p.vceks {
			if id.host == h {
				serials[v.cert.SerialNumber.String()] = v.cert.SerialNumber
			}
		}
		for _, n := range serials {
			revoked = append(revoked, x509.RevocationListEntry{SerialNumber: n, RevocationTime: t})
		}
	}
	a.mu.Unlock()
	return x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		SignatureAlgorithm:        x509.SHA384WithRSAPSS,
		Number:                    big.NewInt(now.Unix()),
		ThisUpdate:                now.Add(-time.Hour),
		NextUpdate:                now.Add(crlNextUpdate),
		RevokedCertificateEntries: revoked,
	}, p.ark, p.arkKey)
}

// KDS returns an http.Handler speaking AMD KDS's VCEK interface for the
// simulated chips: GET /vcek/v1/{product}/{hwid}?blSPL=&teeSPL=&snpSPL=&ucodeSPL=
// answers the DER VCEK, GET /vcek/v1/{product}/cert_chain the ASK and ARK
// PEM, GET /vcek/v1/{product}/crl the product line's DER CRL (see RevokeVCEK
// and RevokeASK). Point evidence.Config.KDSURL at it to exercise VCEK
// fetching and, with SNPRevocation, CRL checks.
func (a *Authority) KDS() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /vcek/v1/{product}/crl", func(w http.ResponseWriter, r *http.Request) {
		p, err := a.product(r.PathValue("product"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		der, err := a.amdCRL(p)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-crl")
		_, _ = w.Write(der)
	})
	mux.HandleFunc("GET /vcek/v1/{product}/{hwid}", func(w http.ResponseWriter, r *http.Request) {
		line := r.PathValue("product")
		p, err := a.product(line)
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		if r.PathValue("hwid") == "cert_chain" {
			w.Header().Set("Content-Type", "application/x-pem-file")
			_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: p.ask.Raw})
			_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: p.ark.Raw})
			return
		}
		chip, err := hex.DecodeString(r.PathValue("hwid"))
		if err != nil {
			http.Error(w, "hwid is not hex", http.StatusBadRequest)
			return
		}
		host, ok := a.hostByChipID(line, chip)
		if !ok {
			http.Error(w, "unknown hwid", http.StatusNotFound)
			return
		}
		spl := func(name string) (uint8, bool) {
			v, err := strconv.ParseUint(r.URL.Query().Get(name), 10, 8)
			return uint8(v), err == nil
		}
		var t evidence.SNPTCB
		var ok1, ok2, ok3, ok4 bool
		t.BootLoader, ok1 = spl("blSPL")
		t.TEE, ok2 = spl("teeSPL")
		t.SNP, ok3 = spl("snpSPL")
		t.Microcode, ok4 = spl("ucodeSPL")
		if !ok1 || !ok2 || !ok3 || !ok4 {
			http.Error(w, "missing or invalid SPL parameters", http.StatusBadRequest)
			return
		}
		v, err := a.vcek(line, host, evidence.ComposeTCB(line, t))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/pkix-cert")
		_, _ = w.Write(v.cert.Raw)
	})
	return mux
}

// vcekPEM encodes a VCEK as the bundle's vcek field (VCEK, then ASK and ARK,
// as the Azure instance metadata service hands them out).
func vcekPEM(p *amdProduct, v *vcek) []byte {
	var b strings.Builder
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: v.cert.Raw})
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: p.ask.Raw})
	_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: p.ark.Raw})
	return []byte(b.String())
}
