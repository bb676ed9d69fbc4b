package keyguard

import (
	"bytes"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"

	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
)

// File is keyguard's configuration file (YAML):
//
//	grants:                      # local release service
//	  - vm: /subscriptions/.../virtualMachines/app-1   # or a VM key
//	    key: disk-key
//	azure_key_vaults:
//	  - name: akv-prod           # backend name in grants and events
//	    vault_url: https://prod-vault.vault.azure.net/
//	    mode: policy             # or disable
//	    keys:
//	      - vm: /subscriptions/.../virtualMachines/app-1
//	        vm_id: 26f8bc30-774e-4290-8e7a-535f3b672aee   # optional
//	        key: app-1-disk
//	        version: ""          # optional: one version only
//	restore:
//	  automatic: [stale]         # causes restored without an operator
type File struct {
	Grants         []GrantSpec   `yaml:"grants"`
	AzureKeyVaults []FileVault   `yaml:"azure_key_vaults"`
	Restore        RestorePolicy `yaml:"restore"`
}

// FileVault is one Key Vault backend in the configuration file.
type FileVault struct {
	Name      string               `yaml:"name"`
	VaultURL  string               `yaml:"vault_url"`
	Mode      string               `yaml:"mode"`
	VMIDClaim string               `yaml:"vm_id_claim"`
	Keys      []azurekv.KeyMapping `yaml:"keys"`
}

// MaxFileSize bounds the configuration file.
const MaxFileSize = 4 << 20

// LoadFile reads and strictly decodes a configuration file.
func LoadFile(path string) (File, error) {
	var f File
	b, err := os.ReadFile(path)
	if err != nil {
		return f, fmt.Errorf("keyguard: config: %w", err)
	}
	if len(b) > MaxFileSize {
		return f, fmt.Errorf("keyguard: config %s is %d bytes, at most %d", path, len(b), MaxFileSize)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		return f, fmt.Errorf("keyguard: config %s: %w", path, err)
	}
	return f, nil
}

// Apply copies the file's settings into cfg.
func (f File) Apply(cfg *Config) {
	cfg.Grants = append(cfg.Grants, f.Grants...)
	for _, v := range f.AzureKeyVaults {
		cfg.AzureKeyVaults = append(cfg.AzureKeyVaults, azurekv.Config{
			Name: v.Name, VaultURL: v.VaultURL, Mode: v.Mode, VMIDClaim: v.VMIDClaim, Keys: v.Keys,
		})
	}
	cfg.Restore.Automatic = append(cfg.Restore.Automatic, f.Restore.Automatic...)
}
