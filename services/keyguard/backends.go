package keyguard

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/internal/kvlast"
)

// backend brings a remote key store in line with a grant's state and
// returns the data it needs to undo what it did (nil: unchanged; empty:
// cleared).
type backend interface {
	apply(ctx context.Context, g grants.Grant) (json.RawMessage, error)
}

// localBackend is the local release service: the grant record itself is
// what release reads, so a state change is in force once stored.
type localBackend struct{}

func (localBackend) apply(context.Context, grants.Grant) (json.RawMessage, error) { return nil, nil }

// azureBackend revokes and restores on one Key Vault.
type azureBackend struct {
	k       *Keyguard
	b       *azurekv.Backend
	version map[string]string // grant key -> configured key version ("" = all)
}

func newAzureBackend(k *Keyguard, cfg azurekv.Config) (*azureBackend, error) {
	cred := cfg.Credential
	if cred == nil {
		c, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return nil, fmt.Errorf("keyguard: Azure credential for %s: %w", cfg.VaultURL, err)
		}
		cred = c
	}
	if cfg.ClientOptions == nil {
		cfg.ClientOptions = &azkeys.ClientOptions{ClientOptions: azcore.ClientOptions{Retry: azurekv.DefaultRetryOptions()}}
	}
	b, err := azurekv.New(cfg, cred)
	if err != nil {
		return nil, err
	}
	ab := &azureBackend{k: k, b: b, version: map[string]string{}}
	for _, m := range cfg.Keys {
		vm, _ := resolveVM(m.VM)
		ab.version[grants.Key(vm, b.Name(), m.Key)] = m.Version
	}
	return ab, nil
}

func (a *azureBackend) apply(ctx context.Context, g grants.Grant) (json.RawMessage, error) {
	prev, err := azurekv.DecodeState(g.BackendData)
	if err != nil {
		return nil, err
	}
	holders := a.holders(g)
	switch g.State {
	case grants.Revoked:
		vmID := g.VMID
		if vmID == "" {
			vmID = a.k.lookupVMID(ctx, g.VMKey)
		}
		st, err := a.b.Revoke(ctx, g.KeyName, a.version[g.Key()], vmID, prev, holders)
		data, merr := json.Marshal(st)
		if merr != nil {
			return nil, merr
		}
		return data, err
	case grants.Active:
		if len(prev.Versions) == 0 {
			return nil, nil // nothing was revoked
		}
		if err := a.b.Restore(ctx, g.KeyName, prev, holders); err != nil {
			return nil, err
		}
		return json.RawMessage{}, nil
	}
	return nil, nil // suspension does not touch Key Vault
}

// holders counts the other grants on the same key that are revoked and
// hold a version disabled.
func (a *azureBackend) holders(self grants.Grant) azurekv.HoldersFunc {
	return func(ctx context.Context, keyName, version string) (int, error) {
		entries, err := a.k.grants.ForKey(ctx, a.b.Name(), keyName)
		if err != nil {
			return 0, err
		}
		n := 0
		for _, e := range entries {
			if e.VMKey == self.VMKey || e.State != grants.Revoked {
				continue
			}
			st, err := azurekv.DecodeState(e.BackendData)
			if err == nil && st.Holds(version) {
				n++
			}
		}
		return n, nil
	}
}

// lookupVMID finds a VM's vmId in its attestation status or its inventory
// record ("" when neither knows it).
func (k *Keyguard) lookupVMID(ctx context.Context, vm string) string {
	if st, err := k.status(ctx, vm); err == nil && st.VMID != "" {
		return st.VMID
	}
	e, err := kvlast.Get(ctx, k.conn.NC, events.BucketVMs, vm)
	if err != nil {
		return ""
	}
	var rec events.VM
	if json.Unmarshal(e.Value, &rec) != nil {
		return ""
	}
	return rec.VMID
}
