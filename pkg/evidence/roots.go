package evidence

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	_ "embed"
	"encoding/hex"
	"encoding/pem"
	"fmt"

	"github.com/google/go-sev-guest/verify/trust"
)

// AMDProductLines returns the AMD product lines with pinned roots: Milan,
// Genoa and Turin.
func AMDProductLines() []string { return []string{"Milan", "Genoa", "Turin"} }

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// IntelRootSHA256 is the SHA-256 fingerprint of Intel's SGX Root CA, the
// pinned root of every TDX PCK chain.
const IntelRootSHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"

// AMDRoots is the ARK and ASK of one AMD product line.
type AMDRoots struct {
	ProductLine string // Milan, Genoa, Turin
	ARK, ASK    *x509.Certificate
}

// TestRoots are trust anchors for simulated evidence, accepted in addition
// to the pinned AMD and Intel roots only when a Config names them
// explicitly. Production verifiers never set them.
type TestRoots struct {
	AMD   []AMDRoots
	Intel []*x509.Certificate
}

// trustStore holds the roots a verifier accepts.
type trustStore struct {
	// amd maps a product line to the root sets for go-sev-guest.
	amd map[string][]*trust.AMDRootCerts
	// intel are the accepted Intel-like root certificates.
	intel []*x509.Certificate
}

func pinnedIntelRoot() (*x509.Certificate, error) {
	blk, _ := pem.Decode(intelRootPEM)
	if blk == nil {
		return nil, fmt.Errorf("evidence: embedded Intel root is not PEM")
	}
	d := sha256.Sum256(blk.Bytes)
	if hex.EncodeToString(d[:]) != IntelRootSHA256 {
		return nil, fmt.Errorf("evidence: embedded Intel root fingerprint mismatch")
	}
	return x509.ParseCertificate(blk.Bytes)
}

func newTrustStore(test *TestRoots) (*trustStore, error) {
	ts := &trustStore{amd: make(map[string][]*trust.AMDRootCerts)}
	for _, pl := range AMDProductLines() {
		r, err := trust.GetDefaultRootCerts(pl)
		if err != nil {
			return nil, fmt.Errorf("evidence: pinned AMD roots for %s: %w", pl, err)
		}
		ts.amd[pl] = append(ts.amd[pl], r)
	}
	intel, err := pinnedIntelRoot()
	if err != nil {
		return nil, err
	}
	ts.intel = append(ts.intel, intel)
	if test != nil {
		for _, r := range test.AMD {
			if r.ARK == nil || r.ASK == nil || r.ProductLine == "" {
				return nil, fmt.Errorf("evidence: test AMD roots need a product line, ARK and ASK")
			}
			ts.amd[r.ProductLine] = append(ts.amd[r.ProductLine], &trust.AMDRootCerts{
				ProductLine:  r.ProductLine,
				ProductCerts: &trust.ProductCerts{Ark: r.ARK, Ask: r.ASK},
			})
		}
		for _, c := range test.Intel {
			if c == nil {
				return nil, fmt.Errorf("evidence: nil test Intel root")
			}
			ts.intel = append(ts.intel, c)
		}
	}
	return ts, nil
}

// intelRoot returns the accepted root byte-equal to root, or nil.
func (ts *trustStore) intelRoot(root *x509.Certificate) *x509.Certificate {
	for _, c := range ts.intel {
		if bytes.Equal(c.Raw, root.Raw) {
			return c
		}
	}
	return nil
}

// PEM block headers of TestRoots.MarshalPEM.
const (
	pemRole    = "Vigil-Role"
	pemProduct = "Vigil-Product-Line"
)

// MarshalPEM encodes the test roots as PEM, so a verifier in another
// process can load them with ParseTestRootsPEM.
func (r *TestRoots) MarshalPEM() []byte {
	var out []byte
	for _, a := range r.AMD {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{pemRole: "amd-ark", pemProduct: a.ProductLine}, Bytes: a.ARK.Raw})...)
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{pemRole: "amd-ask", pemProduct: a.ProductLine}, Bytes: a.ASK.Raw})...)
	}
	for _, c := range r.Intel {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Headers: map[string]string{pemRole: "intel-root"}, Bytes: c.Raw})...)
	}
	return out
}

// ParseTestRootsPEM decodes roots written by MarshalPEM.
func ParseTestRootsPEM(b []byte) (*TestRoots, error) {
	r := &TestRoots{}
	amd := map[string]*AMDRoots{}
	var order []string
	for rest := b; ; {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("test roots: %w", err)
		}
		role, pl := blk.Headers[pemRole], blk.Headers[pemProduct]
		switch role {
		case "amd-ark", "amd-ask":
			if pl == "" {
				return nil, fmt.Errorf("test roots: %s without %s", role, pemProduct)
			}
			a, ok := amd[pl]
			if !ok {
				a = &AMDRoots{ProductLine: pl}
				amd[pl] = a
				order = append(order, pl)
			}
			if role == "amd-ark" {
				a.ARK = c
			} else {
				a.ASK = c
			}
		case "intel-root":
			r.Intel = append(r.Intel, c)
		default:
			return nil, fmt.Errorf("test roots: block with %s %q", pemRole, role)
		}
	}
	for _, pl := range order {
		a := amd[pl]
		if a.ARK == nil || a.ASK == nil {
			return nil, fmt.Errorf("test roots: %s needs both ARK and ASK", pl)
		}
		r.AMD = append(r.AMD, *a)
	}
	if len(r.AMD) == 0 && len(r.Intel) == 0 {
		return nil, fmt.Errorf("test roots: no certificates")
	}
	return r, nil
}
