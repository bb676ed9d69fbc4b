package keyguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/vigil-cc/vigil/pkg/bus"
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
		// Only a vmId from ARM or an operator may narrow a revocation to
		// the VM's claim in the release policy; without one (or with two
		// that disagree) the key version is disabled instead of the policy
		// being edited with a guess.
		vmID, err := a.k.trustedVMID(ctx, g)
		switch {
		case errors.Is(err, errVMIDConflict):
			a.k.log.WarnContext(ctx, "vmId in doubt; disabling the key version", "grant", g.Key(), "err", err)
			vmID = ""
		case err != nil:
			return nil, err
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

// errVMIDConflict: the grant's operator-given vmId is not the one ARM
// reports for the VM.
var errVMIDConflict = errors.New("keyguard: vmId conflict")

// trustedVMID is the vmId of g's VM as ARM reports it (the inventory
// ingest keeps in vigil-vms) or, when ARM has not told, as the operator
// pinned it in the grant; "" when neither knows it. A vmId claimed by
// evidence or carried by an event is never taken. When both are known and
// differ the error wraps errVMIDConflict: a recreated VM or a mistaken
// grant, to be settled by an operator, not guessed.
func (k *Keyguard) trustedVMID(ctx context.Context, g grants.Grant) (string, error) {
	arm, err := k.inventoryVMID(ctx, g.VMKey)
	if err != nil {
		return "", err
	}
	switch {
	case arm == "":
		return g.VMID, nil
	case g.VMID != "" && !strings.EqualFold(g.VMID, arm):
		return "", fmt.Errorf("%w: grant %s names vmId %s, ARM reports %s", errVMIDConflict, g.Key(), g.VMID, arm)
	}
	return arm, nil
}

// inventoryVMID is the vmId ARM reports for vm, read from the inventory's
// stream leader: "" when ingest has no record of the VM or no vmId yet.
func (k *Keyguard) inventoryVMID(ctx context.Context, vm string) (string, error) {
	e, err := kvlast.Get(ctx, k.conn.NC, events.BucketVMs, vm)
	switch {
	case bus.IsKeyMissing(err):
		return "", nil
	case err != nil:
		return "", fmt.Errorf("keyguard: read the inventory record of %s: %w", vm, err)
	}
	var rec struct {
		VMID string `json:"vm_id"`
	}
	if err := json.Unmarshal(e.Value, &rec); err != nil {
		return "", fmt.Errorf("keyguard: inventory record of %s: %w", vm, err)
	}
	return rec.VMID, nil
}
