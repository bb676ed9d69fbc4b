// Package arm reads virtual machines from Azure Resource Manager for
// enrichment and reconciliation: the VM with its instance view (vmId, size,
// security profile, disks, power state), the network interfaces and managed
// disks the VM model does not describe, and the list of every VM of a
// subscription. The Enricher in this package schedules reads within ARM's
// throttling budgets.
package arm

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"

	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// Errors, matched with errors.Is / errors.As.
var (
	// ErrNotFound: ARM answered 404 for the VM.
	ErrNotFound = errors.New("arm: not found")
)

// ThrottledError is ARM answering 429; RetryAfter is how long it asked to
// wait (from Retry-After, or a default when it gave none).
type ThrottledError struct {
	RetryAfter time.Duration
	Err        error
}

func (e *ThrottledError) Error() string {
	return fmt.Sprintf("arm: throttled, retry after %s: %v", e.RetryAfter, e.Err)
}

func (e *ThrottledError) Unwrap() error { return e.Err }

// Config says how to reach ARM.
type Config struct {
	// Credential authenticates to ARM (azidentity in production; a fake or
	// static token against a fake ARM API).
	Credential azcore.TokenCredential
	// Endpoint overrides the ARM endpoint (default: Azure public cloud),
	// for example a fake ARM API served over HTTP in development.
	Endpoint string
	// ClientOptions are passed to the SDK clients (transport, logging,
	// retry). Unless ClientOptions.Retry.StatusCodes is set, the SDK does
	// not retry 429 itself: the Enricher honours Retry-After across all
	// reads of the subscription instead.
	ClientOptions *arm.ClientOptions
	// CacheTTL is how long a NIC's or disk's properties are reused
	// (default 10 min).
	CacheTTL time.Duration
}

// Client reads VMs, NICs and disks from ARM.
type Client struct {
	cred azcore.TokenCredential
	opts arm.ClientOptions
	ttl  time.Duration

	mu    sync.Mutex
	subs  map[string]*subClients
	nics  map[string]cached[bool]
	disks map[string]cached[diskFacts]
}

type subClients struct {
	vms   *armcompute.VirtualMachinesClient
	disks *armcompute.DisksClient
	nics  *armnetwork.InterfacesClient
}

type cached[T any] struct {
	v  T
	at time.Time
}

type diskFacts struct {
	shared, ultra bool
}

// NewClient builds a client; SDK clients per subscription are made lazily.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Credential == nil {
		return nil, errors.New("arm: a credential is required")
	}
	var opts arm.ClientOptions
	if cfg.ClientOptions != nil {
		opts = *cfg.ClientOptions
	}
	if cfg.Endpoint != "" {
		opts.Cloud = cloud.Configuration{
			ActiveDirectoryAuthorityHost: cloud.AzurePublic.ActiveDirectoryAuthorityHost,
			Services: map[cloud.ServiceName]cloud.ServiceConfiguration{
				cloud.ResourceManager: {Endpoint: cfg.Endpoint, Audience: cloud.AzurePublic.Services[cloud.ResourceManager].Audience},
			},
		}
		if strings.HasPrefix(cfg.Endpoint, "http://") {
			opts.InsecureAllowCredentialWithHTTP = true
		}
		opts.DisableRPRegistration = true
	}
	if len(opts.Retry.StatusCodes) == 0 {
		opts.Retry.StatusCodes = []int{http.StatusRequestTimeout, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout}
	}
	if opts.Retry.MaxRetries == 0 {
		opts.Retry.MaxRetries = 2
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = 10 * time.Minute
	}
	return &Client{
		cred:  cfg.Credential,
		opts:  opts,
		ttl:   cfg.CacheTTL,
		subs:  map[string]*subClients{},
		nics:  map[string]cached[bool]{},
		disks: map[string]cached[diskFacts]{},
	}, nil
}

func (c *Client) clients(subscription string) (*subClients, error) {
	key := strings.ToLower(subscription)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.subs[key]; ok {
		return s, nil
	}
	vms, err := armcompute.NewVirtualMachinesClient(subscription, c.cred, &c.opts)
	if err != nil {
		return nil, fmt.Errorf("arm: compute client: %w", err)
	}
	disks, err := armcompute.NewDisksClient(subscription, c.cred, &c.opts)
	if err != nil {
		return nil, fmt.Errorf("arm: disks client: %w", err)
	}
	nics, err := armnetwork.NewInterfacesClient(subscription, c.cred, &c.opts)
	if err != nil {
		return nil, fmt.Errorf("arm: network client: %w", err)
	}
	s := &subClients{vms: vms, disks: disks, nics: nics}
	c.subs[key] = s
	return s, nil
}

// GetVM reads one VM with its instance view.
func (c *Client) GetVM(ctx context.Context, id normalize.VMID) (*armcompute.VirtualMachine, error) {
	s, err := c.clients(id.Subscription)
	if err != nil {
		return nil, err
	}
	resp, err := s.vms.Get(ctx, id.ResourceGroup, id.Name, &armcompute.VirtualMachinesClientGetOptions{
		Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView),
	})
	if err != nil {
		return nil, classify(err, "get VM "+id.ResourceID)
	}
	return &resp.VirtualMachine, nil
}

// Facts reads the VM and what its model leaves open: accelerated
// networking of NICs the model only references, and whether attached
// managed disks are shared or Ultra.
func (c *Client) Facts(ctx context.Context, id normalize.VMID) (compliance.Facts, error) {
	vm, err := c.GetVM(ctx, id)
	if err != nil {
		return compliance.Facts{}, err
	}
	f := compliance.Facts{VM: vm}
	if vm.Properties == nil {
		return f, nil
	}
	if np := vm.Properties.NetworkProfile; np != nil && len(np.NetworkInterfaceConfigurations) == 0 {
		for _, ref := range np.NetworkInterfaces {
			if ref == nil || ref.ID == nil {
				continue
			}
			accel, err := c.nicAccelerated(ctx, *ref.ID)
			if err != nil {
				return compliance.Facts{}, err
			}
			if accel {
				f.AcceleratedNICs = append(f.AcceleratedNICs, *ref.ID)
			}
		}
	}
	if sp := vm.Properties.StorageProfile; sp != nil {
		for _, d := range sp.DataDisks {
			if d == nil || d.ManagedDisk == nil || d.ManagedDisk.ID == nil {
				continue
			}
			df, err := c.disk(ctx, *d.ManagedDisk.ID)
			if err != nil {
				return compliance.Facts{}, err
			}
			if df.shared {
				f.SharedDisks = append(f.SharedDisks, *d.ManagedDisk.ID)
			}
			if df.ultra {
				f.UltraDisks = append(f.UltraDisks, *d.ManagedDisk.ID)
			}
		}
	}
	return f, nil
}

func (c *Client) nicAccelerated(ctx context.Context, nicID string) (bool, error) {
	return lookup(ctx, c, c.nics, "NIC", nicID, func(ctx context.Context, s *subClients, rid *arm.ResourceID) (bool, error) {
		resp, err := s.nics.Get(ctx, rid.ResourceGroupName, rid.Name, nil)
		if err != nil {
			return false, err
		}
		return resp.Properties != nil && resp.Properties.EnableAcceleratedNetworking != nil && *resp.Properties.EnableAcceleratedNetworking, nil
	})
}

func (c *Client) disk(ctx context.Context, diskID string) (diskFacts, error) {
	return lookup(ctx, c, c.disks, "disk", diskID, func(ctx context.Context, s *subClients, rid *arm.ResourceID) (diskFacts, error) {
		var df diskFacts
		resp, err := s.disks.Get(ctx, rid.ResourceGroupName, rid.Name, nil)
		if err != nil {
			return df, err
		}
		if p := resp.Properties; p != nil && p.MaxShares != nil && *p.MaxShares > 1 {
			df.shared = true
		}
		if resp.SKU != nil && resp.SKU.Name != nil && *resp.SKU.Name == armcompute.DiskStorageAccountTypesUltraSSDLRS {
			df.ultra = true
		}
		return df, nil
	})
}

// lookup reads the resource id (of kind) with get, through the cache: a
// value read less than the cache's TTL ago is used as it is. A resource
// that is gone has the zero value (no accelerated networking, a disk
// neither shared nor ultra).
func lookup[T any](ctx context.Context, c *Client, cache map[string]cached[T], kind, id string, get func(context.Context, *subClients, *arm.ResourceID) (T, error)) (T, error) {
	var zero T
	key := strings.ToLower(id)
	c.mu.Lock()
	v, ok := cache[key]
	c.mu.Unlock()
	if ok && time.Since(v.at) < c.ttl {
		return v.v, nil
	}
	rid, err := arm.ParseResourceID(id)
	if err != nil {
		return zero, fmt.Errorf("arm: %s id %q: %w", kind, id, err)
	}
	s, err := c.clients(rid.SubscriptionID)
	if err != nil {
		return zero, err
	}
	val, err := get(ctx, s, rid)
	switch {
	case err == nil:
	case errors.Is(classify(err, ""), ErrNotFound):
		val = zero
	default:
		return zero, classify(err, "get "+kind+" "+id)
	}
	c.mu.Lock()
	cache[key] = cached[T]{v: val, at: time.Now()}
	c.mu.Unlock()
	return val, nil
}

// ListAll returns every VM of a subscription, with power state
// (statusOnly=true).
func (c *Client) ListAll(ctx context.Context, subscription string) ([]*armcompute.VirtualMachine, error) {
	s, err := c.clients(subscription)
	if err != nil {
		return nil, err
	}
	var out []*armcompute.VirtualMachine
	pager := s.vms.NewListAllPager(&armcompute.VirtualMachinesClientListAllOptions{StatusOnly: to.Ptr("true")})
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, classify(err, "list VMs of subscription "+subscription)
		}
		out = append(out, page.Value...)
	}
	return out, nil
}

// DefaultRetryAfter is assumed when ARM throttles without saying how long.
const DefaultRetryAfter = 30 * time.Second

func classify(err error, what string) error {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		if what == "" {
			return err
		}
		return fmt.Errorf("arm: %s: %w", what, err)
	}
	switch re.StatusCode {
	case http.StatusNotFound:
		return fmt.Errorf("%w: %s: %s", ErrNotFound, what, re.ErrorCode)
	case http.StatusTooManyRequests:
		return &ThrottledError{RetryAfter: retryAfter(re.RawResponse), Err: fmt.Errorf("%s: %w", what, err)}
	}
	return fmt.Errorf("arm: %s: %w", what, err)
}

// retryAfter reads the delay ARM asked for: x-ms-retry-after-ms,
// retry-after-ms, then Retry-After (seconds or an HTTP date).
func retryAfter(resp *http.Response) time.Duration {
	if resp == nil {
		return DefaultRetryAfter
	}
	for _, h := range []string{"x-ms-retry-after-ms", "retry-after-ms"} {
		if v := resp.Header.Get(h); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms >= 0 {
				return time.Duration(ms) * time.Millisecond
			}
		}
	}
	if v := resp.Header.Get("Retry-After"); v != "" {
		if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
			return time.Duration(s) * time.Second
		}
		if t, err := http.ParseTime(v); err == nil {
			return max(time.Until(t), 0)
		}
	}
	return DefaultRetryAfter
}

// PowerState reads "PowerState/<state>" from an instance view's statuses
// (running, stopped, deallocated, starting, stopping, deallocating), or "".
func PowerState(vm *armcompute.VirtualMachine) string {
	if vm == nil || vm.Properties == nil || vm.Properties.InstanceView == nil {
		return ""
	}
	for _, s := range vm.Properties.InstanceView.Statuses {
		if s == nil || s.Code == nil {
			continue
		}
		if state, ok := strings.CutPrefix(*s.Code, "PowerState/"); ok {
			return strings.ToLower(state)
		}
	}
	return ""
}
