// Package sim simulates Azure Confidential VMs that answer attestation
// challenges with Azure-layout evidence bundles (SEV-SNP via go-sev-guest's
// test signer chain, TDX via a test-only Intel-like chain), for tests, the
// fleet simulator and benchmarks. Evidence from a sim VM verifies only with
// a verifier told to trust the Authority's test roots.
package sim

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/vigil-cc/vigil/pkg/evidence"
)

// DefaultSeed is the seed of an Authority built without one. Every process
// using the same seed gets the same simulated hardware keys, so a verifier
// in another process can trust the simulated roots (NewAuthority with the
// same seed, or TestRoots written with evidence.TestRoots.MarshalPEM). The
// seed determines the Intel-like chain, chip IDs and VCEK keys; the AMD ARK
// and ASK keys are go-sev-guest's fixed test keys whatever the seed.
const DefaultSeed = "vigil-sim-v1"

// AuthorityConfig configures the simulated hardware vendors.
type AuthorityConfig struct {
	// Seed determines every simulated hardware key; default DefaultSeed.
	Seed string
	// Hosts is the number of simulated physical hosts per platform and
	// product line (SNP chips, TDX platforms); VMs spread over them.
	// Default 4.
	Hosts int
}

// Authority is the simulated hardware vendors: AMD (go-sev-guest's test
// ARK/ASK per product line, VCEKs per simulated chip and TCB) and Intel (a
// test-only SGX root, PCK platform CA, PCK certificates and quoting
// enclaves per simulated platform). It is safe for concurrent use.
type Authority struct {
	seed  string
	hosts int

	mu    sync.Mutex
	amd   map[string]*amdProduct // by product line, built lazily
	intel *intelCA               // built lazily
	ek    crypto.PublicKey       // shared HCLEkPub of simulated VMs
	// revoked holds serial numbers (decimal) of revoked PCK certificates.
	revoked map[string]bool
	// revokedVCEKs and revokedASKs hold when the VCEKs of a SEV-SNP host
	// and the ASK of a product line were revoked.
	revokedVCEKs map[int]time.Time
	revokedASKs  map[string]time.Time
	// names are the VM names (sim-<the vmId's first 8 hex digits>) given
	// to VMs whose vmId this authority made, so that no two are alike.
	names map[string]bool
}

// NewAuthority returns an Authority. Building the vendor chains happens on
// first use and takes tens of milliseconds.
func NewAuthority(cfg AuthorityConfig) (*Authority, error) {
	if cfg.Seed == "" {
		cfg.Seed = DefaultSeed
	}
	if cfg.Hosts <= 0 {
		cfg.Hosts = 4
	}
	a := &Authority{seed: cfg.Seed, hosts: cfg.Hosts, amd: make(map[string]*amdProduct)}
	a.ek = a.deriveKey(elliptic.P256(), "ek").Public()
	return a, nil
}

// TrustRoots returns the test roots a verifier must be told to trust to
// accept evidence from this Authority's VMs:
//
//	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
func (a *Authority) TrustRoots() *evidence.TestRoots {
	roots := &evidence.TestRoots{}
	for _, pl := range ProductLines {
		p, err := a.product(pl)
		if err != nil {
			panic(err) // fixed test keys: cannot fail
		}
		roots.AMD = append(roots.AMD, evidence.AMDRoots{ProductLine: pl, ARK: p.ark, ASK: p.ask})
	}
	ca, err := a.intelCA()
	if err != nil {
		panic(err)
	}
	roots.Intel = append(roots.Intel, ca.root)
	return roots
}

// ProductLines are the SEV-SNP product lines the simulator models.
var ProductLines = []string{"Milan", "Genoa"}

// deriveKey derives an ECDSA key on curve from the seed and labels.
func (a *Authority) deriveKey(curve elliptic.Curve, labels ...any) *ecdsa.PrivateKey {
	size := (curve.Params().BitSize + 7) / 8
	for ctr := uint32(0); ; ctr++ {
		d := a.derive(size, append(labels, ctr)...)
		if k, err := ecdsa.ParseRawPrivateKey(curve, d); err == nil {
			return k
		}
	}
}

// derive returns n bytes determined by the seed and labels.
func (a *Authority) derive(n int, labels ...any) []byte {
	var out []byte
	for block := uint32(0); len(out) < n; block++ {
		h := sha512.New()
		io.WriteString(h, a.seed)
		for _, l := range labels {
			fmt.Fprintf(h, "\x00%v", l)
		}
		var b [4]byte
		binary.BigEndian.PutUint32(b[:], block)
		h.Write(b[:])
		out = h.Sum(out)
	}
	return out[:n]
}

// deterministicSigner makes ECDSA certificate signatures deterministic
// (RFC 6979), so certificates derived from the seed are byte-identical in
// every process.
type deterministicSigner struct{ k *ecdsa.PrivateKey }

func (s deterministicSigner) Public() crypto.PublicKey { return s.k.Public() }

func (s deterministicSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.Sign(nil, digest, opts)
}

// certEpoch is the validity start of every simulated certificate.
var certEpoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
