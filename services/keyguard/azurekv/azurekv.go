// Package azurekv revokes and restores a VM's access to Azure Key Vault keys
// released by secure key release (SKR).
//
// Revoking rewrites each key version's mutable release policy so that the
// VM's vmId claim (x-ms-azurevm-vmid) no longer satisfies it: every
// authority gets the conditions claim notEquals <vmId> (upper and lower
// case). When the policy is immutable, cannot be rewritten safely, the vmId
// is unknown, or the backend is configured so, the key version is disabled
// instead. Restoring reverses exactly what was done, and re-enables a
// version only when no other revoked grant still holds it disabled.
package azurekv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// Modes of revocation.
const (
	// ModePolicy rewrites mutable release policies and disables key
	// versions whose policy cannot be rewritten (the default).
	ModePolicy = "policy"
	// ModeDisable always disables the key versions.
	ModeDisable = "disable"
)

// Actions recorded per key version.
const (
	ActionPolicy  = "policy"  // the release policy excludes the VM
	ActionDisable = "disable" // the version was disabled (or held disabled) for the VM
	ActionNone    = "none"    // nothing to do: not releasable, or disabled by someone else
)

// Config configures one Key Vault backend.
type Config struct {
	// Name names the backend in grants and events (default "azure-keyvault").
	Name string
	// VaultURL is the vault, e.g. https://myvault.vault.azure.net/.
	VaultURL string
	// Credential authenticates to the vault (keyguard uses azidentity's
	// DefaultAzureCredential when nil).
	Credential azcore.TokenCredential
	// ClientOptions are passed to azkeys.NewClient (tests set a fake
	// transport here).
	ClientOptions *azkeys.ClientOptions
	// Mode is ModePolicy (default) or ModeDisable.
	Mode string
	// VMIDClaim is the token claim carrying the vmId (default
	// x-ms-azurevm-vmid).
	VMIDClaim string
	// MaxVersions bounds the key versions acted on per key (default 200).
	MaxVersions int
	// Keys maps VMs to the keys they may obtain.
	Keys []KeyMapping
}

// KeyMapping says that a VM may obtain a key.
type KeyMapping struct {
	// VM is the VM key or the ARM resource ID of the VM.
	VM string `json:"vm" yaml:"vm"`
	// VMID is the VM's vmId (GUID); when empty keyguard takes it from the
	// inventory or the attestation status.
	VMID string `json:"vm_id,omitempty" yaml:"vm_id,omitempty"`
	// Key is the Key Vault key name.
	Key string `json:"key" yaml:"key"`
	// Version limits revocation to one key version; empty means every
	// version of the key.
	Version string `json:"version,omitempty" yaml:"version,omitempty"`
}

// VersionAction records what revocation did to one key version.
type VersionAction struct {
	Version string `json:"version"`
	Action  string `json:"action"`
}

// State is the backend data stored with a revoked grant.
type State struct {
	Vault    string          `json:"vault"`
	VMID     string          `json:"vm_id,omitempty"`
	Versions []VersionAction `json:"versions"`
	At       time.Time       `json:"at"`
}

// DecodeState reads backend data; empty data is an empty state.
func DecodeState(b []byte) (State, error) {
	var s State
	if len(b) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("azurekv: backend data: %w", err)
	}
	return s, nil
}

// Holds reports whether state holds version disabled.
func (s State) Holds(version string) bool {
	for _, v := range s.Versions {
		if v.Version == version && v.Action == ActionDisable {
			return true
		}
	}
	return false
}

// HoldersFunc counts the other revoked grants on the same key that hold
// version disabled.
type HoldersFunc func(ctx context.Context, keyName, version string) (int, error)

// Backend acts on one vault.
type Backend struct {
	name, vault, mode, claim string
	maxVersions              int
	client                   *azkeys.Client
}

// New builds a backend authenticating with cred.
func New(cfg Config, cred azcore.TokenCredential) (*Backend, error) {
	if cfg.VaultURL == "" {
		return nil, errors.New("azurekv: VaultURL is required")
	}
	if cred == nil {
		return nil, errors.New("azurekv: a credential is required")
	}
	b := &Backend{name: cfg.Name, vault: strings.TrimRight(cfg.VaultURL, "/"), mode: cfg.Mode, claim: cfg.VMIDClaim, maxVersions: cfg.MaxVersions}
	if b.name == "" {
		b.name = "azure-keyvault"
	}
	if b.mode == "" {
		b.mode = ModePolicy
	}
	if b.mode != ModePolicy && b.mode != ModeDisable {
		return nil, fmt.Errorf("azurekv: mode %q: want %q or %q", b.mode, ModePolicy, ModeDisable)
	}
	if b.claim == "" {
		b.claim = DefaultVMIDClaim
	}
	if b.maxVersions <= 0 {
		b.maxVersions = 200
	}
	c, err := azkeys.NewClient(cfg.VaultURL, cred, cfg.ClientOptions)
	if err != nil {
		return nil, fmt.Errorf("azurekv: client for %s: %w", cfg.VaultURL, err)
	}
	b.client = c
	return b, nil
}

// Name is the backend's name.
func (b *Backend) Name() string { return b.name }

// Vault is the vault URL.
func (b *Backend) Vault() string { return b.vault }

// versions lists the versions to act on: version when set, else every
// version of the key (newest listed by the service first or not, all of them).
func (b *Backend) versions(ctx context.Context, name, version string) ([]string, error) {
	if version != "" {
		return []string{version}, nil
	}
	var out []string
	pager := b.client.NewListKeyPropertiesVersionsPager(name, nil)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("azurekv: list versions of %s: %w", name, err)
		}
		for _, p := range page.Value {
			if p == nil || p.KID == nil {
				continue
			}
			if v := p.KID.Version(); v != "" {
				out = append(out, v)
			}
		}
		if len(out) > b.maxVersions {
			return nil, fmt.Errorf("azurekv: key %s has more than %d versions; configure a version", name, b.maxVersions)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("azurekv: key %s has no versions", name)
	}
	return out, nil
}

// Revoke takes key (all versions, or version) away from the VM with vmID
// (empty when unknown: the versions are then disabled). It is idempotent:
// a version already revoked for the VM is left as it is. On error the
// returned state records the versions done so far; pass it as prev to the
// next attempt, which completes the revocation.
func (b *Backend) Revoke(ctx context.Context, key, version, vmID string, prev State, holders HoldersFunc) (State, error) {
	st := State{Vault: b.vault, VMID: vmID, At: time.Now().UTC()}
	versions, err := b.versions(ctx, key, version)
	if err != nil {
		return prev, err
	}
	for _, v := range versions {
		action, err := b.revokeVersion(ctx, key, v, vmID, prev.Holds(v), holders)
		if err != nil {
			// Keep what earlier attempts did to the versions not reached.
			for _, pv := range prev.Versions {
				if !st.has(pv.Version) {
					st.Versions = append(st.Versions, pv)
				}
			}
			return st, err
		}
		st.Versions = append(st.Versions, VersionAction{Version: v, Action: action})
	}
	return st, nil
}

func (s State) has(version string) bool {
	for _, v := range s.Versions {
		if v.Version == version {
			return true
		}
	}
	return false
}

func (b *Backend) revokeVersion(ctx context.Context, key, version, vmID string, heldBefore bool, holders HoldersFunc) (string, error) {
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := b.client.GetKey(ctx, key, version, nil)
		if err != nil {
			return "", fmt.Errorf("azurekv: get %s/%s: %w", key, version, err)
		}
		kb := resp.KeyBundle
		enabled := kb.Attributes == nil || kb.Attributes.Enabled == nil || *kb.Attributes.Enabled
		if !enabled {
			// Disabled already: by an earlier attempt of this revocation,
			// or held for another VM's revocation (then this grant holds it
			// too), or by someone else (then never ours to enable).
			if heldBefore {
				return ActionDisable, nil
			}
			n, err := holders(ctx, key, version)
			if err != nil {
				return "", err
			}
			if n > 0 {
				return ActionDisable, nil
			}
			return ActionNone, nil
		}
		rp := kb.ReleasePolicy
		exportable := kb.Attributes != nil && kb.Attributes.Exportable != nil && *kb.Attributes.Exportable
		if rp == nil || len(rp.EncodedPolicy) == 0 {
			if !exportable {
				return ActionNone, nil // no release policy: SKR cannot release it
			}
			return ActionDisable, b.setEnabled(ctx, key, version, false)
		}
		if b.mode == ModeDisable || vmID == "" || (rp.Immutable != nil && *rp.Immutable) {
			return ActionDisable, b.setEnabled(ctx, key, version, false)
		}
		p, err := ParsePolicy(rp.EncodedPolicy)
		if err != nil {
			return ActionDisable, b.setEnabled(ctx, key, version, false)
		}
		if !p.Exclude(b.claim, vmID) {
			return ActionPolicy, nil
		}
		if err := b.setPolicy(ctx, key, version, rp, p); err != nil {
			return "", err
		}
		// Key Vault has no conditional update: read back and try again
		// when a concurrent writer replaced the policy meanwhile.
		check, err := b.client.GetKey(ctx, key, version, nil)
		if err != nil {
			return "", fmt.Errorf("azurekv: read back %s/%s: %w", key, version, err)
		}
		if crp := check.ReleasePolicy; crp != nil {
			if cp, err := ParsePolicy(crp.EncodedPolicy); err == nil && cp.Excludes(b.claim, vmID) {
				return ActionPolicy, nil
			}
		}
	}
	return "", fmt.Errorf("azurekv: %s/%s: the release policy kept changing under the rewrite", key, version)
}

// Restore undoes st for the VM with vmID.
func (b *Backend) Restore(ctx context.Context, key string, st State, holders HoldersFunc) error {
	for _, va := range st.Versions {
		switch va.Action {
		case ActionPolicy:
			if err := b.restorePolicy(ctx, key, va.Version, st.VMID); err != nil {
				return err
			}
		case ActionDisable:
			n, err := holders(ctx, key, va.Version)
			if err != nil {
				return err
			}
			if n > 0 {
				continue // another revoked VM still needs it disabled
			}
			if err := b.setEnabled(ctx, key, va.Version, true); err != nil {
				return err
			}
		}
	}
	return nil
}

func (b *Backend) restorePolicy(ctx context.Context, key, version, vmID string) error {
	for attempt := 0; attempt < 5; attempt++ {
		resp, err := b.client.GetKey(ctx, key, version, nil)
		if err != nil {
			return fmt.Errorf("azurekv: get %s/%s: %w", key, version, err)
		}
		rp := resp.ReleasePolicy
		if rp == nil || len(rp.EncodedPolicy) == 0 {
			return nil
		}
		p, err := ParsePolicy(rp.EncodedPolicy)
		if err != nil {
			return fmt.Errorf("azurekv: restore %s/%s: %w", key, version, err)
		}
		if !p.Unexclude(b.claim, vmID) {
			return nil
		}
		if err := b.setPolicy(ctx, key, version, rp, p); err != nil {
			return err
		}
		check, err := b.client.GetKey(ctx, key, version, nil)
		if err != nil {
			return fmt.Errorf("azurekv: read back %s/%s: %w", key, version, err)
		}
		if crp := check.ReleasePolicy; crp != nil {
			if cp, err := ParsePolicy(crp.EncodedPolicy); err == nil && !hasExclusion(cp, b.claim, vmID) {
				return nil
			}
		}
	}
	return fmt.Errorf("azurekv: %s/%s: the release policy kept changing under the restore", key, version)
}

func hasExclusion(p *Policy, claim, vmID string) bool {
	c := *p
	c.AnyOf = append([]Authority(nil), p.AnyOf...)
	for i := range c.AnyOf {
		c.AnyOf[i].AllOf = append([]Condition(nil), p.AnyOf[i].AllOf...)
	}
	return c.Unexclude(claim, vmID)
}

func (b *Backend) setPolicy(ctx context.Context, key, version string, old *azkeys.KeyReleasePolicy, p *Policy) error {
	enc, err := p.Marshal()
	if err != nil {
		return err
	}
	ct := old.ContentType
	if ct == nil {
		ct = to.Ptr("application/json; charset=utf-8")
	}
	_, err = b.client.UpdateKey(ctx, key, version, azkeys.UpdateKeyParameters{
		ReleasePolicy: &azkeys.KeyReleasePolicy{ContentType: ct, EncodedPolicy: enc},
	}, nil)
	if err != nil {
		return fmt.Errorf("azurekv: update release policy of %s/%s: %w", key, version, err)
	}
	return nil
}

func (b *Backend) setEnabled(ctx context.Context, key, version string, enabled bool) error {
	_, err := b.client.UpdateKey(ctx, key, version, azkeys.UpdateKeyParameters{
		KeyAttributes: &azkeys.KeyAttributes{Enabled: to.Ptr(enabled)},
	}, nil)
	if err != nil {
		return fmt.Errorf("azurekv: set enabled=%t on %s/%s: %w", enabled, key, version, err)
	}
	return nil
}

// DefaultRetryOptions keep a revocation from hanging on a throttled or
// unreachable vault: keyguard retries unapplied revocations itself.
func DefaultRetryOptions() policy.RetryOptions {
	return policy.RetryOptions{MaxRetries: 2, TryTimeout: 20 * time.Second, RetryDelay: 500 * time.Millisecond, MaxRetryDelay: 5 * time.Second}
}
