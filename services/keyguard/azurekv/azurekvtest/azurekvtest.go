// Package azurekvtest is an in-memory Azure Key Vault behind azkeys/fake
// for tests of code that revokes and restores keys: it keeps key versions
// with their attributes and release policies, applies updates the way the
// service does, and records every REST call the client makes.
package azurekvtest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys/fake"

	"github.com/vigil-cc/vigil/services/keyguard/azurekv"
)

// VaultURL is the fake vault.
const VaultURL = "https://vigil-test.vault.azure.net"

// Vault is an in-memory Key Vault. FailNext injects failures: "PATCH
// name/version" -> number of updates to fail with 503.
type Vault struct {
	mu       sync.Mutex
	keys     map[string]map[string]*azkeys.KeyBundle
	FailNext map[string]int // "PATCH name/version" -> failures to inject
	calls    []RestCall
	gate     func(id string)
}

// SetGate makes every update call gate("PATCH name/version") before it is
// applied, outside the vault's lock, so a test can hold an update back and
// let others overtake it. nil removes the gate.
func (v *Vault) SetGate(gate func(id string)) {
	v.mu.Lock()
	v.gate = gate
	v.mu.Unlock()
}

// RestCall is one REST request the client made.
type RestCall struct {
	Method, Path string
	Body         map[string]any
}

func (c RestCall) String() string { return c.Method + " " + c.Path }

// NewVault returns an empty vault.
func NewVault() *Vault {
	return &Vault{keys: map[string]map[string]*azkeys.KeyBundle{}, FailNext: map[string]int{}}
}

// AddKey adds a key version.
func (v *Vault) AddKey(name, version string, enabled, exportable bool, pol []byte, immutable bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.keys[name] == nil {
		v.keys[name] = map[string]*azkeys.KeyBundle{}
	}
	kb := &azkeys.KeyBundle{
		Attributes: &azkeys.KeyAttributes{Enabled: to.Ptr(enabled), Exportable: to.Ptr(exportable)},
		Key:        &azkeys.JSONWebKey{KID: to.Ptr(azkeys.ID(VaultURL + "/keys/" + name + "/" + version))},
	}
	if pol != nil {
		kb.ReleasePolicy = &azkeys.KeyReleasePolicy{ContentType: to.Ptr("application/json; charset=utf-8"), EncodedPolicy: pol, Immutable: to.Ptr(immutable)}
	}
	v.keys[name][version] = kb
}

// Get returns a copy of a key version.
func (v *Vault) Get(name, version string) azkeys.KeyBundle {
	v.mu.Lock()
	defer v.mu.Unlock()
	kb := v.keys[name][version]
	out := *kb
	attrs := *kb.Attributes
	out.Attributes = &attrs
	if kb.ReleasePolicy != nil {
		rp := *kb.ReleasePolicy
		rp.EncodedPolicy = bytes.Clone(rp.EncodedPolicy)
		out.ReleasePolicy = &rp
	}
	return out
}

// Policy parses a key version's release policy.
func (v *Vault) Policy(t *testing.T, name, version string) *azurekv.Policy {
	t.Helper()
	kb := v.Get(name, version)
	p, err := azurekv.ParsePolicy(kb.ReleasePolicy.EncodedPolicy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Enabled reports whether a key version is enabled.
func (v *Vault) Enabled(name, version string) bool {
	return *v.Get(name, version).Attributes.Enabled
}

// TakeCalls returns and forgets the REST calls made so far.
func (v *Vault) TakeCalls() []RestCall {
	v.mu.Lock()
	defer v.mu.Unlock()
	c := v.calls
	v.calls = nil
	return c
}

// splitPath undoes a quirk of the generated fake: its path pattern's
// character class includes '/', so /keys/{name}/{version} arrives as name
// "name/version" and an empty version.
func splitPath(name, version string) (string, string) {
	if version == "" {
		if i := strings.IndexByte(name, '/'); i >= 0 {
			return name[:i], name[i+1:]
		}
	}
	return name, version
}

// Server is the azkeys/fake server of the vault.
func (v *Vault) Server() *fake.Server {
	return &fake.Server{
		GetKey: func(_ context.Context, name, version string, _ *azkeys.GetKeyOptions) (resp azfake.Responder[azkeys.GetKeyResponse], errResp azfake.ErrorResponder) {
			name, version = splitPath(name, version)
			v.mu.Lock()
			_, ok := v.keys[name][version]
			v.mu.Unlock()
			if !ok {
				errResp.SetResponseError(http.StatusNotFound, "KeyNotFound")
				return
			}
			resp.SetResponse(http.StatusOK, azkeys.GetKeyResponse{KeyBundle: v.Get(name, version)}, nil)
			return
		},
		UpdateKey: func(_ context.Context, name, version string, p azkeys.UpdateKeyParameters, _ *azkeys.UpdateKeyOptions) (resp azfake.Responder[azkeys.UpdateKeyResponse], errResp azfake.ErrorResponder) {
			name, version = splitPath(name, version)
			id := "PATCH " + name + "/" + version
			v.mu.Lock()
			gate := v.gate
			v.mu.Unlock()
			if gate != nil {
				gate(id)
			}
			v.mu.Lock()
			defer v.mu.Unlock()
			if v.FailNext[id] > 0 {
				v.FailNext[id]--
				errResp.SetResponseError(http.StatusServiceUnavailable, "ServiceUnavailable")
				return
			}
			kb, ok := v.keys[name][version]
			if !ok {
				errResp.SetResponseError(http.StatusNotFound, "KeyNotFound")
				return
			}
			if p.ReleasePolicy != nil {
				if kb.ReleasePolicy != nil && kb.ReleasePolicy.Immutable != nil && *kb.ReleasePolicy.Immutable {
					errResp.SetResponseError(http.StatusBadRequest, "BadParameter")
					return
				}
				imm := kb.ReleasePolicy.Immutable
				kb.ReleasePolicy = &azkeys.KeyReleasePolicy{ContentType: p.ReleasePolicy.ContentType, EncodedPolicy: p.ReleasePolicy.EncodedPolicy, Immutable: imm}
			}
			if p.KeyAttributes != nil && p.KeyAttributes.Enabled != nil {
				kb.Attributes.Enabled = to.Ptr(*p.KeyAttributes.Enabled)
			}
			resp.SetResponse(http.StatusOK, azkeys.UpdateKeyResponse{KeyBundle: *kb}, nil)
			return
		},
		NewListKeyPropertiesVersionsPager: func(name string, _ *azkeys.ListKeyPropertiesVersionsOptions) (resp azfake.PagerResponder[azkeys.ListKeyPropertiesVersionsResponse]) {
			v.mu.Lock()
			defer v.mu.Unlock()
			var versions []string
			for ver := range v.keys[name] {
				versions = append(versions, ver)
			}
			sort.Strings(versions)
			// One page per version, to exercise paging.
			for _, ver := range versions {
				kb := v.keys[name][ver]
				resp.AddPage(http.StatusOK, azkeys.ListKeyPropertiesVersionsResponse{KeyPropertiesListResult: azkeys.KeyPropertiesListResult{
					Value: []*azkeys.KeyProperties{{KID: kb.Key.KID, Attributes: kb.Attributes}},
				}}, nil)
			}
			return
		},
	}
}

// recorder records every request before the fake server answers it.
type recorder struct {
	v    *Vault
	next policy.Transporter
}

func (r recorder) Do(req *http.Request) (*http.Response, error) {
	c := RestCall{Method: req.Method, Path: req.URL.Path}
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req.Body = io.NopCloser(bytes.NewReader(b))
		if len(b) > 0 {
			if err := json.Unmarshal(b, &c.Body); err != nil {
				return nil, fmt.Errorf("request body is not JSON: %w", err)
			}
		}
	}
	r.v.mu.Lock()
	r.v.calls = append(r.v.calls, c)
	r.v.mu.Unlock()
	return r.next.Do(req)
}

// ClientOptions route an azkeys client to the vault, recording calls.
func (v *Vault) ClientOptions() *azkeys.ClientOptions {
	opts := &azkeys.ClientOptions{}
	opts.Transport = recorder{v: v, next: fake.NewServerTransport(v.Server())}
	opts.Retry = policy.RetryOptions{MaxRetries: -1}
	return opts
}

// Backend returns a backend named "akv" on the vault.
func (v *Vault) Backend(t *testing.T, mode string) *azurekv.Backend {
	t.Helper()
	b, err := azurekv.New(azurekv.Config{Name: "akv", VaultURL: VaultURL, Mode: mode, ClientOptions: v.ClientOptions()}, &azfake.TokenCredential{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Patches returns the PATCH calls among calls.
func Patches(calls []RestCall) []RestCall {
	var out []RestCall
	for _, c := range calls {
		if c.Method == http.MethodPatch {
			out = append(out, c)
		}
	}
	return out
}
