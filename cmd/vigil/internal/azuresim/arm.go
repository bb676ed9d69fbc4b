// Package azuresim simulates the parts of Azure that Vigil talks to: an ARM
// compute API (virtual machines with instance views, list-all paging, network
// interfaces) served over HTTP in the real REST shapes, and Event Grid
// pushing VM lifecycle events to a webhook exactly as Azure sends them.
package azuresim

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
)

// Power states, as in the instance view status code PowerState/<state>.
const (
	PowerRunning     = "running"
	PowerStopped     = "stopped"
	PowerDeallocated = "deallocated"
)

// VMSpec describes one simulated virtual machine.
type VMSpec struct {
	Subscription  string
	ResourceGroup string
	Name          string
	Location      string
	VMID          string // the vmId GUID; the agent reports it as vmUniqueId
	Size          string // e.g. Standard_DC4as_v5 (SEV-SNP) or Standard_DC4es_v5 (TDX)

	// Configuration knobs; the zero value is a compliant confidential VM.
	SecurityType         string // default ConfidentialVM
	DiskEncryption       string // default DiskWithVMGuestState
	DiskEncryptionSetID  string // customer-managed key, when set
	SecureBootDisabled   bool
	VTPMDisabled         bool
	UltraSSD             bool
	AcceleratedNIC       bool
	ImagePublisher       string // default Canonical
	ImageOffer           string // default 0001-com-ubuntu-confidential-vm-jammy
	ImageSKU             string // default 22_04-lts-cvm
	BootDiagnosticsOnly  bool
	DedicatedHostID      string
	ScaleSetID           string
	ProvisioningDuration time.Duration

	// Tags are the VM's Azure tags (TagsFor gives a VM realistic ones).
	Tags map[string]string
}

// TagsFor returns realistic Azure tags for the VM named name, the same for
// the same name: env (prod or staging), team (payments, platform or
// identity) and cost-center.
func TagsFor(name string) map[string]string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(strings.ToLower(name)))
	n := h.Sum32()
	env := "prod"
	if n%3 == 0 {
		env = "staging"
	}
	teams := []string{"payments", "platform", "identity"}
	return map[string]string{
		"env":         env,
		"team":        teams[(n/3)%uint32(len(teams))],
		"cost-center": fmt.Sprintf("cc-%d", 1000+(n/9)%40),
	}
}

// ResourceID is the VM's ARM resource ID.
func (s VMSpec) ResourceID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s", s.Subscription, s.ResourceGroup, s.Name)
}

func (s VMSpec) nicID() string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Network/networkInterfaces/%s-nic", s.Subscription, s.ResourceGroup, s.Name)
}

type vmState struct {
	spec    VMSpec
	power   string
	created time.Time
}

// ARM is a simulated Azure Resource Manager compute API. It is safe for
// concurrent use; serve it with http.Server or httptest.
type ARM struct {
	mu       sync.Mutex
	vms      map[string]*vmState // lower-cased resource ID
	sorted   []string            // vms' keys in order, for list pages; nil after a VM came or went
	pageSize int
	gets     int
	lists    int
	throttle int // answer this many next requests with 429
}

// NewARM returns an empty simulated ARM API that pages list results by
// pageSize (default 100).
func NewARM(pageSize int) *ARM {
	if pageSize <= 0 {
		pageSize = 100
	}
	return &ARM{vms: map[string]*vmState{}, pageSize: pageSize}
}

// Put creates or updates a VM in the running state.
func (a *ARM) Put(spec VMSpec) {
	spec.Tags = maps.Clone(spec.Tags)
	a.mu.Lock()
	defer a.mu.Unlock()
	id := strings.ToLower(spec.ResourceID())
	if st, ok := a.vms[id]; ok {
		st.spec = spec
		return
	}
	a.vms[id] = &vmState{spec: spec, power: PowerRunning, created: time.Now().UTC()}
	a.sorted = nil
}

// SetPower changes a VM's power state; it reports whether the VM exists.
func (a *ARM) SetPower(resourceID, power string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	st, ok := a.vms[strings.ToLower(resourceID)]
	if ok {
		st.power = power
	}
	return ok
}

// Delete removes a VM; it reports whether it existed.
func (a *ARM) Delete(resourceID string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := strings.ToLower(resourceID)
	_, ok := a.vms[id]
	delete(a.vms, id)
	a.sorted = nil
	return ok
}

// Throttle makes the next n requests fail with 429 and a Retry-After of 1 s.
func (a *ARM) Throttle(n int) {
	a.mu.Lock()
	a.throttle = n
	a.mu.Unlock()
}

// Calls returns how many VM gets and list pages have been served.
func (a *ARM) Calls() (gets, lists int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gets, a.lists
}

var (
	vmPath   = regexp.MustCompile(`(?i)^/subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.compute/virtualmachines/([^/]+)(/instanceview)?$`)
	listPath = regexp.MustCompile(`(?i)^/subscriptions/([^/]+)/providers/microsoft\.compute/virtualmachines$`)
	nicPath  = regexp.MustCompile(`(?i)^/subscriptions/([^/]+)/resourcegroups/([^/]+)/providers/microsoft\.network/networkinterfaces/([^/]+)$`)
)

// ServeHTTP answers GET requests of the compute and network APIs.
func (a *ARM) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		armError(w, http.StatusMethodNotAllowed, "MethodNotAllowed", "the simulator serves GET only")
		return
	}
	if r.URL.Query().Get("api-version") == "" {
		armError(w, http.StatusBadRequest, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) is required for all requests.")
		return
	}
	a.mu.Lock()
	if a.throttle > 0 {
		a.throttle--
		a.mu.Unlock()
		w.Header().Set("Retry-After", "1")
		armError(w, http.StatusTooManyRequests, "OperationNotAllowed", "The server rejected the request because too many requests have been received for this subscription.")
		return
	}
	a.mu.Unlock()
	switch p := r.URL.Path; {
	case vmPath.MatchString(p):
		m := vmPath.FindStringSubmatch(p)
		a.serveVM(w, r, m[1], m[2], m[3], m[4] != "")
	case listPath.MatchString(p):
		a.serveList(w, r, listPath.FindStringSubmatch(p)[1])
	case nicPath.MatchString(p):
		m := nicPath.FindStringSubmatch(p)
		a.serveNIC(w, m[1], m[2], m[3])
	default:
		armError(w, http.StatusNotFound, "InvalidResourceType", "The resource type could not be found in the namespace for api version.")
	}
}

func (a *ARM) serveVM(w http.ResponseWriter, r *http.Request, sub, rg, name string, instanceViewOnly bool) {
	id := strings.ToLower(fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s", sub, rg, name))
	a.mu.Lock()
	a.gets++
	st, ok := a.vms[id]
	var vm armcompute.VirtualMachine
	if ok {
		vm = st.model(instanceViewOnly || strings.EqualFold(r.URL.Query().Get("$expand"), "instanceView"))
	}
	a.mu.Unlock()
	if !ok {
		armError(w, http.StatusNotFound, "ResourceNotFound", fmt.Sprintf("The Resource 'Microsoft.Compute/virtualMachines/%s' under resource group '%s' was not found.", name, rg))
		return
	}
	if instanceViewOnly {
		writeJSON(w, vm.Properties.InstanceView)
		return
	}
	writeJSON(w, vm)
}

func (a *ARM) serveList(w http.ResponseWriter, r *http.Request, sub string) {
	skip, _ := strconv.Atoi(r.URL.Query().Get("$skiptoken"))
	a.mu.Lock()
	a.lists++
	if a.sorted == nil {
		// Sorted once for the pages of every list until a VM comes or
		// goes (a 20,000-VM list is 20 pages).
		a.sorted = slices.Sorted(maps.Keys(a.vms))
	}
	ids := make([]string, 0, len(a.sorted))
	for _, id := range a.sorted {
		if strings.EqualFold(a.vms[id].spec.Subscription, sub) {
			ids = append(ids, id)
		}
	}
	page := armcompute.VirtualMachineListResult{Value: []*armcompute.VirtualMachine{}}
	end := min(skip+a.pageSize, len(ids))
	for _, id := range ids[min(skip, len(ids)):end] {
		vm := a.vms[id].model(false)
		page.Value = append(page.Value, &vm)
	}
	a.mu.Unlock()
	if end < len(ids) {
		next := *r.URL
		q := next.Query()
		q.Set("$skiptoken", strconv.Itoa(end))
		next.RawQuery = q.Encode()
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		page.NextLink = to.Ptr(scheme + "://" + r.Host + next.RequestURI())
	}
	writeJSON(w, page)
}

func (a *ARM) serveNIC(w http.ResponseWriter, sub, rg, nic string) {
	// A simulated VM's one NIC is named after it: the lookup is the VM's,
	// not a scan of the fleet.
	var found *VMSpec
	if name, ok := cutSuffixFold(nic, "-nic"); ok {
		id := strings.ToLower(fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s", sub, rg, name))
		a.mu.Lock()
		if st, ok := a.vms[id]; ok {
			s := st.spec
			found = &s
		}
		a.mu.Unlock()
	}
	if found == nil {
		armError(w, http.StatusNotFound, "ResourceNotFound", "The Resource 'Microsoft.Network/networkInterfaces' was not found.")
		return
	}
	writeJSON(w, map[string]any{
		"id":       found.nicID(),
		"name":     found.Name + "-nic",
		"type":     "Microsoft.Network/networkInterfaces",
		"location": found.Location,
		"properties": map[string]any{
			"provisioningState":           "Succeeded",
			"enableAcceleratedNetworking": found.AcceleratedNIC,
			"virtualMachine":              map[string]any{"id": found.ResourceID()},
		},
	})
}

// cutSuffixFold is strings.CutSuffix ignoring case (ARM's names are).
func cutSuffixFold(s, suffix string) (string, bool) {
	if len(s) < len(suffix) || !strings.EqualFold(s[len(s)-len(suffix):], suffix) {
		return s, false
	}
	return s[:len(s)-len(suffix)], true
}

// model renders the VM as ARM returns it.
func (st *vmState) model(withInstanceView bool) armcompute.VirtualMachine {
	s := st.spec
	or := func(v, def string) string {
		if v == "" {
			return def
		}
		return v
	}
	secType := armcompute.SecurityTypes(or(s.SecurityType, string(armcompute.SecurityTypesConfidentialVM)))
	diskEnc := armcompute.SecurityEncryptionTypes(or(s.DiskEncryption, string(armcompute.SecurityEncryptionTypesDiskWithVMGuestState)))
	diskSec := &armcompute.VMDiskSecurityProfile{SecurityEncryptionType: &diskEnc}
	if s.DiskEncryptionSetID != "" {
		diskSec.DiskEncryptionSet = &armcompute.DiskEncryptionSetParameters{ID: to.Ptr(s.DiskEncryptionSetID)}
	}
	props := &armcompute.VirtualMachineProperties{
		VMID:              to.Ptr(s.VMID),
		ProvisioningState: to.Ptr("Succeeded"),
		TimeCreated:       to.Ptr(st.created),
		HardwareProfile:   &armcompute.HardwareProfile{VMSize: to.Ptr(armcompute.VirtualMachineSizeTypes(s.Size))},
		SecurityProfile: &armcompute.SecurityProfile{
			SecurityType: &secType,
			UefiSettings: &armcompute.UefiSettings{SecureBootEnabled: to.Ptr(!s.SecureBootDisabled), VTpmEnabled: to.Ptr(!s.VTPMDisabled)},
		},
		StorageProfile: &armcompute.StorageProfile{
			ImageReference: &armcompute.ImageReference{
				Publisher: to.Ptr(or(s.ImagePublisher, "Canonical")),
				Offer:     to.Ptr(or(s.ImageOffer, "0001-com-ubuntu-confidential-vm-jammy")),
				SKU:       to.Ptr(or(s.ImageSKU, "22_04-lts-cvm")),
				Version:   to.Ptr("latest"),
			},
			OSDisk: &armcompute.OSDisk{
				Name:         to.Ptr(s.Name + "_OsDisk_1"),
				OSType:       to.Ptr(armcompute.OperatingSystemTypesLinux),
				CreateOption: to.Ptr(armcompute.DiskCreateOptionTypesFromImage),
				ManagedDisk: &armcompute.ManagedDiskParameters{
					StorageAccountType: to.Ptr(armcompute.StorageAccountTypesPremiumLRS),
					SecurityProfile:    diskSec,
				},
			},
		},
		NetworkProfile: &armcompute.NetworkProfile{NetworkInterfaces: []*armcompute.NetworkInterfaceReference{{ID: to.Ptr(s.nicID())}}},
		DiagnosticsProfile: &armcompute.DiagnosticsProfile{BootDiagnostics: &armcompute.BootDiagnostics{
			Enabled: to.Ptr(s.BootDiagnosticsOnly),
		}},
	}
	if s.UltraSSD {
		props.AdditionalCapabilities = &armcompute.AdditionalCapabilities{UltraSSDEnabled: to.Ptr(true)}
	}
	if s.DedicatedHostID != "" {
		props.Host = &armcompute.SubResource{ID: to.Ptr(s.DedicatedHostID)}
	}
	if s.ScaleSetID != "" {
		props.VirtualMachineScaleSet = &armcompute.SubResource{ID: to.Ptr(s.ScaleSetID)}
	}
	if withInstanceView {
		props.InstanceView = &armcompute.VirtualMachineInstanceView{
			ComputerName: to.Ptr(s.Name),
			OSName:       to.Ptr("ubuntu"),
			OSVersion:    to.Ptr("22.04"),
			Statuses: []*armcompute.InstanceViewStatus{
				{Code: to.Ptr("ProvisioningState/succeeded"), Level: to.Ptr(armcompute.StatusLevelTypesInfo), DisplayStatus: to.Ptr("Provisioning succeeded"), Time: to.Ptr(st.created)},
				{Code: to.Ptr("PowerState/" + st.power), Level: to.Ptr(armcompute.StatusLevelTypesInfo), DisplayStatus: to.Ptr(powerDisplay(st.power))},
			},
		}
	}
	var tags map[string]*string
	if len(s.Tags) > 0 {
		tags = make(map[string]*string, len(s.Tags))
		for k, v := range s.Tags {
			tags[k] = to.Ptr(v)
		}
	}
	return armcompute.VirtualMachine{
		ID:         to.Ptr(s.ResourceID()),
		Name:       to.Ptr(s.Name),
		Type:       to.Ptr("Microsoft.Compute/virtualMachines"),
		Location:   to.Ptr(or(s.Location, "westeurope")),
		Tags:       tags,
		Properties: props,
	}
}

func powerDisplay(p string) string {
	switch p {
	case PowerRunning:
		return "VM running"
	case PowerStopped:
		return "VM stopped"
	case PowerDeallocated:
		return "VM deallocated"
	}
	return "VM " + p
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		armError(w, http.StatusInternalServerError, "InternalServerError", err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-request-id", strconv.FormatInt(time.Now().UnixNano(), 36))
	_, _ = w.Write(b)
}

func armError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("x-ms-error-code", code)
	w.WriteHeader(status)
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	_, _ = w.Write(b)
}
