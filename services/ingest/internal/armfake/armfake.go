// Package armfake is an in-memory ARM for tests, built on the SDKs' own
// fake servers (armcompute/v7/fake, armnetwork/v7/fake): VMs, managed disks
// and NICs of one subscription, counters of the reads made, and injected
// 429 responses with Retry-After.
package armfake

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	computefake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7"
	networkfake "github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/network/armnetwork/v7/fake"
)

// ARM is the fake. Its zero value is not usable; call New.
type ARM struct {
	mu         sync.Mutex
	vms        map[string]*armcompute.VirtualMachine // by "<rg>/<name>", lower case
	disks      map[string]*armcompute.Disk
	nics       map[string]*armnetwork.Interface
	gets       map[string]int
	nicGets    int
	diskGets   int
	lists      int
	throttle   int    // the next throttle VM reads answer 429
	retryAfter string // with this Retry-After
	fail       int    // the next fail VM reads answer 503

	compute policy.Transporter
	network policy.Transporter
}

// New returns an empty fake ARM.
func New() *ARM {
	a := &ARM{
		vms:   map[string]*armcompute.VirtualMachine{},
		disks: map[string]*armcompute.Disk{},
		nics:  map[string]*armnetwork.Interface{},
		gets:  map[string]int{},
	}
	a.compute = computefake.NewServerFactoryTransport(&computefake.ServerFactory{
		VirtualMachinesServer: computefake.VirtualMachinesServer{Get: a.getVM, NewListAllPager: a.listAll},
		DisksServer:           computefake.DisksServer{Get: a.getDisk},
	})
	a.network = networkfake.NewServerFactoryTransport(&networkfake.ServerFactory{
		InterfacesServer: networkfake.InterfacesServer{Get: a.getNIC},
	})
	return a
}

func key(rg, name string) string { return strings.ToLower(rg + "/" + name) }

// keyOf is the map key of a resource ID.
func keyOf(id string) string {
	rid, err := arm.ParseResourceID(id)
	if err != nil {
		panic(fmt.Sprintf("armfake: bad resource id %q: %v", id, err))
	}
	return key(rid.ResourceGroupName, rid.Name)
}

// PutVM adds or replaces a VM (its ID must be set).
func (a *ARM) PutVM(vm *armcompute.VirtualMachine) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.vms[keyOf(*vm.ID)] = vm
}

// DeleteVM removes a VM.
func (a *ARM) DeleteVM(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.vms, keyOf(id))
}

// PutDisk adds a managed disk.
func (a *ARM) PutDisk(d *armcompute.Disk) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.disks[keyOf(*d.ID)] = d
}

// PutNIC adds a network interface.
func (a *ARM) PutNIC(n *armnetwork.Interface) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.nics[keyOf(*n.ID)] = n
}

// Gets is the number of reads of the VM id (including throttled ones).
func (a *ARM) Gets(id string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gets[keyOf(id)]
}

// NICGets, DiskGets and Lists count the other reads.
func (a *ARM) NICGets() int  { a.mu.Lock(); defer a.mu.Unlock(); return a.nicGets }
func (a *ARM) DiskGets() int { a.mu.Lock(); defer a.mu.Unlock(); return a.diskGets }
func (a *ARM) Lists() int    { a.mu.Lock(); defer a.mu.Unlock(); return a.lists }

// Throttle makes the next n VM reads answer 429 with the given Retry-After.
func (a *ARM) Throttle(n int, retryAfter string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.throttle, a.retryAfter = n, retryAfter
}

// Fail makes the next n VM reads answer 503 (an ARM outage).
func (a *ARM) Fail(n int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.fail = n
}

// Credential is a fake token credential.
func (a *ARM) Credential() azcore.TokenCredential { return &azfake.TokenCredential{} }

// ClientOptions route the SDK clients to the fake, without SDK retries of
// 503 so that tests see outages at once.
func (a *ARM) ClientOptions() *arm.ClientOptions {
	o := &arm.ClientOptions{}
	o.Transport = a
	o.Retry.MaxRetries = -1
	o.Retry.StatusCodes = []int{}
	o.DisableRPRegistration = true
	return o
}

// Do implements policy.Transporter: injected failures first, then the
// network or compute fake by resource provider.
func (a *ARM) Do(req *http.Request) (*http.Response, error) {
	path := strings.ToLower(req.URL.Path)
	// A VM get names its resource group; the fake pager's next-page links
	// (".../virtualMachines/fake_page_N") do not.
	isVMGet := req.Method == http.MethodGet && strings.Contains(path, "/resourcegroups/") && strings.Contains(path, "/providers/microsoft.compute/virtualmachines/") &&
		strings.Count(strings.SplitN(path, "/providers/microsoft.compute/virtualmachines/", 2)[1], "/") == 0
	if isVMGet {
		a.mu.Lock()
		rest := strings.SplitN(path, "/resourcegroups/", 2)[1]
		rg := strings.SplitN(rest, "/", 2)[0]
		name := path[strings.LastIndex(path, "/")+1:]
		a.gets[key(rg, name)]++
		status, retry := 0, ""
		switch {
		case a.throttle > 0:
			a.throttle--
			status, retry = http.StatusTooManyRequests, a.retryAfter
		case a.fail > 0:
			a.fail--
			status = http.StatusServiceUnavailable
		}
		a.mu.Unlock()
		if status != 0 {
			h := http.Header{"Content-Type": {"application/json"}}
			if retry != "" {
				h.Set("Retry-After", retry)
			}
			body := fmt.Sprintf(`{"error":{"code":"%s","message":"injected by armfake"}}`, http.StatusText(status))
			return &http.Response{StatusCode: status, Status: http.StatusText(status), Header: h, Request: req,
				Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body))}, nil
		}
	}
	if strings.Contains(path, "/providers/microsoft.network/") {
		return a.network.Do(req)
	}
	return a.compute.Do(req)
}

func (a *ARM) getVM(_ context.Context, rg, name string, _ *armcompute.VirtualMachinesClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachinesClientGetResponse], errResp azfake.ErrorResponder) {
	a.mu.Lock()
	vm, ok := a.vms[key(rg, name)]
	a.mu.Unlock()
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachinesClientGetResponse{VirtualMachine: *vm}, nil)
	return
}

func (a *ARM) listAll(_ *armcompute.VirtualMachinesClientListAllOptions) (resp azfake.PagerResponder[armcompute.VirtualMachinesClientListAllResponse]) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lists++
	var page []*armcompute.VirtualMachine
	for _, vm := range a.vms {
		page = append(page, vm)
		if len(page) == 2 {
			resp.AddPage(http.StatusOK, armcompute.VirtualMachinesClientListAllResponse{VirtualMachineListResult: armcompute.VirtualMachineListResult{Value: page}}, nil)
			page = nil
		}
	}
	resp.AddPage(http.StatusOK, armcompute.VirtualMachinesClientListAllResponse{VirtualMachineListResult: armcompute.VirtualMachineListResult{Value: page}}, nil)
	return
}

func (a *ARM) getDisk(_ context.Context, rg, name string, _ *armcompute.DisksClientGetOptions) (resp azfake.Responder[armcompute.DisksClientGetResponse], errResp azfake.ErrorResponder) {
	a.mu.Lock()
	a.diskGets++
	d, ok := a.disks[key(rg, name)]
	a.mu.Unlock()
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	resp.SetResponse(http.StatusOK, armcompute.DisksClientGetResponse{Disk: *d}, nil)
	return
}

func (a *ARM) getNIC(_ context.Context, rg, name string, _ *armnetwork.InterfacesClientGetOptions) (resp azfake.Responder[armnetwork.InterfacesClientGetResponse], errResp azfake.ErrorResponder) {
	a.mu.Lock()
	a.nicGets++
	n, ok := a.nics[key(rg, name)]
	a.mu.Unlock()
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	resp.SetResponse(http.StatusOK, armnetwork.InterfacesClientGetResponse{Interface: *n}, nil)
	return
}

// CompliantVM is a fully compliant confidential VM: DCasv5, ConfidentialVM
// with vTPM and secure boot, OS disk with DiskWithVMGuestState encryption
// and a customer-managed key, Ubuntu 22.04 CVM image, running.
func CompliantVM(subscription, rg, name, vmID string) *armcompute.VirtualMachine {
	id := "/subscriptions/" + subscription + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachines/" + name
	return &armcompute.VirtualMachine{
		ID:       to.Ptr(id),
		Name:     to.Ptr(name),
		Location: to.Ptr("westeurope"),
		Type:     to.Ptr("Microsoft.Compute/virtualMachines"),
		Properties: &armcompute.VirtualMachineProperties{
			VMID:            to.Ptr(vmID),
			HardwareProfile: &armcompute.HardwareProfile{VMSize: to.Ptr(armcompute.VirtualMachineSizeTypes("Standard_DC4as_v5"))},
			SecurityProfile: &armcompute.SecurityProfile{
				SecurityType: to.Ptr(armcompute.SecurityTypesConfidentialVM),
				UefiSettings: &armcompute.UefiSettings{SecureBootEnabled: to.Ptr(true), VTpmEnabled: to.Ptr(true)},
			},
			StorageProfile: &armcompute.StorageProfile{
				ImageReference: &armcompute.ImageReference{Publisher: to.Ptr("Canonical"), Offer: to.Ptr("0001-com-ubuntu-confidential-vm-jammy"), SKU: to.Ptr("22_04-lts-cvm"), Version: to.Ptr("latest")},
				OSDisk: &armcompute.OSDisk{
					OSType: to.Ptr(armcompute.OperatingSystemTypesLinux),
					ManagedDisk: &armcompute.ManagedDiskParameters{
						SecurityProfile: &armcompute.VMDiskSecurityProfile{
							SecurityEncryptionType: to.Ptr(armcompute.SecurityEncryptionTypesDiskWithVMGuestState),
							DiskEncryptionSet:      &armcompute.DiskEncryptionSetParameters{ID: to.Ptr("/subscriptions/" + subscription + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/diskEncryptionSets/cmk")},
						},
					},
				},
			},
			NetworkProfile: &armcompute.NetworkProfile{NetworkInterfaces: []*armcompute.NetworkInterfaceReference{
				{ID: to.Ptr("/subscriptions/" + subscription + "/resourceGroups/" + rg + "/providers/Microsoft.Network/networkInterfaces/" + name + "-nic")},
			}},
			InstanceView: &armcompute.VirtualMachineInstanceView{Statuses: []*armcompute.InstanceViewStatus{
				{Code: to.Ptr("ProvisioningState/succeeded")}, {Code: to.Ptr("PowerState/running")},
			}},
		},
	}
}

// NIC is a network interface with or without accelerated networking.
func NIC(id string, accelerated bool) *armnetwork.Interface {
	return &armnetwork.Interface{ID: to.Ptr(id), Properties: &armnetwork.InterfacePropertiesFormat{EnableAcceleratedNetworking: to.Ptr(accelerated)}}
}
