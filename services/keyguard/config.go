package keyguard

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/service"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// ErrConfig is wrapped by every error about keyguard's configuration.
var ErrConfig = errors.New("keyguard: invalid configuration")

// BackendLocal names the local release service in grants and events.
const BackendLocal = "local"

// DefaultSource is the CloudEvents source of keyguard's events.
const DefaultSource = "keyguard"

// Config configures keyguard.
type Config struct {
	// Options are the bus connection, provisioning, operational listener,
	// health, telemetry, logger and readiness hook every service shares.
	// Ready is called once keyguard consumes events and serves releases.
	service.Options

	// MasterKey (32 bytes) encrypts the local release service's secrets at
	// rest; MasterKeyFile is read when MasterKey is nil (see
	// secrets.ParseMasterKey for the accepted encodings). One of them is
	// required.
	MasterKey     []byte
	MasterKeyFile string
	// ImportSecrets are stored, encrypted, at start when no secret of that
	// name exists yet (a development convenience; production imports with
	// `vigil keyguard secret put`).
	ImportSecrets map[string][]byte

	// Grants are local release grants created at start when missing.
	Grants []GrantSpec
	// AzureKeyVaults are Key Vault backends; their key mappings become
	// grants at start.
	AzureKeyVaults []azurekv.Config

	// Restore is the policy for grants of a VM that is trusted again after
	// a revocation.
	Restore RestorePolicy

	// Evidence configures verification of release evidence.
	Evidence EvidenceConfig

	// NonceTTL is how long a release nonce stays valid (default 2 min,
	// at most the nonce bucket's TTL of 5 min).
	NonceTTL time.Duration
	// Nonces bounds the release nonces keyguard issues.
	Nonces NonceLimits
	// Concurrency bounds the events handled at once (default 16).
	Concurrency int
	// ApplyWorkers bounds concurrent calls to remote backends (default 4).
	ApplyWorkers int
	// ReconcileInterval is how often every grant is checked against the
	// attestation status and pending backend work is retried (default 30 s).
	ReconcileInterval time.Duration
	// Consumer names the durable consumer on VIGIL_EVENTS (default
	// "keyguard"); every replica shares it.
	Consumer string
	// Source is the CloudEvents source of keyguard's events.
	Source string
	// Enroll configures agent enrollment by attestation and the
	// revocation of agents' bus credentials.
	Enroll EnrollConfig
}

// NonceLimits bounds the release nonces keyguard issues. Nonces are issued
// only for VMs that hold a local grant. The rates apply per keyguard
// replica; the bound on unused nonces applies across replicas.
type NonceLimits struct {
	// PerVM is how many unused, unexpired nonces one VM may hold at once
	// (default 8).
	PerVM int
	// VMRate is how many nonces per second one VM obtains on average, and
	// VMBurst how many in a row (default 1 per second, 8 in a row).
	VMRate  float64
	VMBurst int
	// RequesterRate and RequesterBurst bound the nonce requests of one
	// requester, granted or not (default 2 per second, 16 in a row). The
	// requester is the account and user the NATS server names in the
	// Nats-Request-Info header, which it sets when the request reaches
	// keyguard through a service import that shares the requester's
	// details (share: true); without that header only the per-VM bounds
	// apply.
	RequesterRate  float64
	RequesterBurst int
	// Tracked bounds the VMs and the requesters the rate limits remember
	// (default 65536 each).
	Tracked int
}

func (l *NonceLimits) defaults() {
	if l.PerVM <= 0 {
		l.PerVM = 8
	}
	if l.VMRate <= 0 {
		l.VMRate = 1
	}
	if l.VMBurst <= 0 {
		l.VMBurst = 8
	}
	if l.RequesterRate <= 0 {
		l.RequesterRate = 2
	}
	if l.RequesterBurst <= 0 {
		l.RequesterBurst = 16
	}
	if l.Tracked <= 0 {
		l.Tracked = 1 << 16
	}
}

// GrantSpec says that a VM may obtain a secret from the local release
// service.
type GrantSpec struct {
	// VM is the VM key or the ARM resource ID of the VM.
	VM string `json:"vm" yaml:"vm"`
	// VMID is the VM's vmId (optional; taken from inventory otherwise).
	VMID string `json:"vm_id,omitempty" yaml:"vm_id,omitempty"`
	// Key is the secret's name.
	Key string `json:"key" yaml:"key"`
}

// RestorePolicy says when a revoked grant becomes active again without an
// operator. By default never: an operator restores with `vigil keyguard
// restore`.
type RestorePolicy struct {
	// Automatic lists the revocation causes after which a grant is
	// restored automatically once the VM's status is trusted or warning
	// again: "stale" and/or "untrusted". Revocations of retired VMs and by
	// operators are never restored automatically.
	Automatic []string `json:"automatic,omitempty" yaml:"automatic,omitempty"`
}

// Allows reports whether a revocation for cause may be restored
// automatically.
func (p RestorePolicy) Allows(cause string) bool {
	if cause == grants.CauseRetired || cause == grants.CauseOperator {
		return false
	}
	for _, c := range p.Automatic {
		if c == cause {
			return true
		}
	}
	return false
}

func (p RestorePolicy) validate() error {
	for _, c := range p.Automatic {
		if c != grants.CauseStale && c != grants.CauseUntrusted {
			return fmt.Errorf("keyguard: automatic restore after %q: only %q and %q can be restored automatically", c, grants.CauseStale, grants.CauseUntrusted)
		}
	}
	return nil
}

func (c *Config) defaults() {
	if c.NonceTTL <= 0 {
		c.NonceTTL = 2 * time.Minute
	}
	c.Nonces.defaults()
	c.Enroll.defaults()
	if c.Concurrency <= 0 {
		c.Concurrency = 16
	}
	if c.ApplyWorkers <= 0 {
		c.ApplyWorkers = 4
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = 30 * time.Second
	}
	if c.Consumer == "" {
		c.Consumer = "keyguard"
	}
	if c.Source == "" {
		c.Source = DefaultSource
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func (c *Config) validate() error {
	if c.NonceTTL > 5*time.Minute {
		return fmt.Errorf("keyguard: nonce TTL %s exceeds the nonce bucket's TTL of 5m", c.NonceTTL)
	}
	for _, r := range []float64{c.Nonces.VMRate, c.Nonces.RequesterRate} {
		if math.IsNaN(r) || math.IsInf(r, 0) {
			return fmt.Errorf("keyguard: nonce rate %v is not a number of nonces per second", r)
		}
	}
	if err := c.Restore.validate(); err != nil {
		return err
	}
	for name, v := range c.ImportSecrets {
		if !keyrelease.ValidKeyName(name) {
			return fmt.Errorf("keyguard: secret name %q: want 1 to %d characters of [A-Za-z0-9_-]", name, keyrelease.MaxKeyNameLen)
		}
		if len(v) == 0 || len(v) > secrets.MaxSecretSize {
			return fmt.Errorf("keyguard: secret %s is %d bytes, want 1 to %d", name, len(v), secrets.MaxSecretSize)
		}
	}
	for i, g := range c.Grants {
		if _, err := resolveVM(g.VM); err != nil {
			return fmt.Errorf("keyguard: grant %d: %w", i, err)
		}
		if !keyrelease.ValidKeyName(g.Key) {
			return fmt.Errorf("keyguard: grant %d: key name %q is not valid", i, g.Key)
		}
	}
	seen := map[string]bool{BackendLocal: true}
	for i, a := range c.AzureKeyVaults {
		name := a.Name
		if name == "" {
			name = "azure-keyvault"
		}
		if !grants.ValidBackendName(name) {
			return fmt.Errorf("keyguard: Azure Key Vault backend %d: name %q: want 1 to 32 characters of [a-z0-9-]", i, name)
		}
		if seen[name] {
			return fmt.Errorf("keyguard: backend name %q used twice", name)
		}
		seen[name] = true
		if a.VaultURL == "" {
			return fmt.Errorf("keyguard: Azure Key Vault backend %s: vault URL is required", name)
		}
		for j, m := range a.Keys {
			if _, err := resolveVM(m.VM); err != nil {
				return fmt.Errorf("keyguard: backend %s key %d: %w", name, j, err)
			}
			if !keyrelease.ValidKeyName(m.Key) {
				return fmt.Errorf("keyguard: backend %s key %d: key name %q is not valid", name, j, m.Key)
			}
		}
	}
	if c.MasterKey == nil && c.MasterKeyFile == "" {
		return errors.New("keyguard: a master key (MasterKey or MasterKeyFile) is required")
	}
	return nil
}

// ResolveVM turns a VM key or an ARM resource ID into a VM key.
func ResolveVM(s string) (string, error) { return resolveVM(s) }

func resolveVM(s string) (string, error) {
	switch {
	case events.ValidVMKey(s):
		return s, nil
	case len(s) > 0 && s[0] == '/' && len(s) < 1024:
		return events.VMKey(s), nil
	}
	return "", fmt.Errorf("%q is neither a VM key nor an ARM resource ID", s)
}
