package azuresim

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
)

type staticToken struct{}

func (staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: "sim", ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func newClient(t *testing.T, srv *httptest.Server, sub string) *armcompute.VirtualMachinesClient {
	t.Helper()
	opts := &arm.ClientOptions{ClientOptions: policy.ClientOptions{
		Cloud:     cloud.Configuration{Services: map[cloud.ServiceName]cloud.ServiceConfiguration{cloud.ResourceManager: {Endpoint: srv.URL, Audience: "https://management.core.windows.net/"}}},
		Transport: srv.Client(),
		Retry:     policy.RetryOptions{MaxRetries: -1},
	}}
	c, err := armcompute.NewVirtualMachinesClient(sub, staticToken{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestARMServesTheSDKClient(t *testing.T) {
	sim := NewARM(100)
	srv := httptest.NewTLSServer(sim)
	defer srv.Close()
	const sub = "00000000-0000-0000-0000-0000000000aa"
	for i := range 250 {
		sim.Put(VMSpec{Subscription: sub, ResourceGroup: "rg-cvm", Name: fmt.Sprintf("vm-%03d", i), VMID: NewVMID(), Size: "Standard_DC4as_v5"})
	}
	sim.Put(VMSpec{Subscription: "other", ResourceGroup: "rg", Name: "elsewhere", VMID: NewVMID(), Size: "Standard_DC2as_v5"})
	c := newClient(t, srv, sub)
	ctx := context.Background()

	n := 0
	for pager := c.NewListAllPager(nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n += len(page.Value)
	}
	if n != 250 {
		t.Fatalf("listed %d VMs, want 250", n)
	}

	spec := VMSpec{Subscription: sub, ResourceGroup: "rg-cvm", Name: "vm-007"}
	sim.SetPower(spec.ResourceID(), PowerDeallocated)
	got, err := c.Get(ctx, "RG-CVM", "vm-007", &armcompute.VirtualMachinesClientGetOptions{Expand: to.Ptr(armcompute.InstanceViewTypesInstanceView)})
	if err != nil {
		t.Fatal(err)
	}
	p := got.Properties
	if *p.SecurityProfile.SecurityType != armcompute.SecurityTypesConfidentialVM || !*p.SecurityProfile.UefiSettings.VTpmEnabled ||
		*p.StorageProfile.OSDisk.ManagedDisk.SecurityProfile.SecurityEncryptionType != armcompute.SecurityEncryptionTypesDiskWithVMGuestState ||
		p.VMID == nil || *p.VMID == "" {
		t.Fatalf("VM model incomplete: %+v", p)
	}
	if code := *p.InstanceView.Statuses[1].Code; code != "PowerState/deallocated" {
		t.Fatalf("power state %s", code)
	}

	sim.Delete(spec.ResourceID())
	_, err = c.Get(ctx, "rg-cvm", "vm-007", nil)
	var re *azcore.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusNotFound || re.ErrorCode != "ResourceNotFound" {
		t.Fatalf("get deleted VM: %v", err)
	}

	sim.Throttle(1)
	_, err = c.Get(ctx, "rg-cvm", "vm-008", nil)
	if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests || re.RawResponse.Header.Get("Retry-After") == "" {
		t.Fatalf("throttled get: %v", err)
	}
	if _, err := c.Get(ctx, "rg-cvm", "vm-008", nil); err != nil {
		t.Fatalf("get after throttling: %v", err)
	}
}

// TestARMTags: a VM's tags are in its model, read alone or listed, and
// TagsFor gives each VM realistic tags, the same for the same name.
func TestARMTags(t *testing.T) {
	sim := NewARM(2)
	srv := httptest.NewTLSServer(sim)
	defer srv.Close()
	const sub = "00000000-0000-0000-0000-0000000000bb"
	for i := range 5 {
		name := fmt.Sprintf("vm-%d", i)
		sim.Put(VMSpec{Subscription: sub, ResourceGroup: "rg", Name: name, VMID: NewVMID(), Size: "Standard_DC4as_v5", Tags: TagsFor(name)})
	}
	c := newClient(t, srv, sub)
	ctx := context.Background()
	check := func(vm *armcompute.VirtualMachine) {
		t.Helper()
		want := TagsFor(*vm.Name)
		if len(vm.Tags) != len(want) {
			t.Fatalf("%s: tags %v, want %v", *vm.Name, vm.Tags, want)
		}
		for k, v := range want {
			if got := vm.Tags[k]; got == nil || *got != v {
				t.Errorf("%s: tag %s = %v, want %q", *vm.Name, k, got, v)
			}
		}
	}
	got, err := c.Get(ctx, "rg", "vm-3", nil)
	if err != nil {
		t.Fatal(err)
	}
	check(&got.VirtualMachine)
	listed := 0
	for pager := c.NewListAllPager(nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, vm := range page.Value {
			check(vm)
			listed++
		}
	}
	if listed != 5 {
		t.Fatalf("listed %d VMs", listed)
	}
	envs := map[string]bool{}
	for i := range 50 {
		tags := TagsFor(fmt.Sprintf("cvm-%03d", i))
		envs[tags["env"]] = true
		if tags["team"] == "" || tags["cost-center"] == "" {
			t.Errorf("tags %v lack a team or cost center", tags)
		}
	}
	if !envs["prod"] || !envs["staging"] || len(envs) != 2 {
		t.Errorf("envs over 50 VMs: %v, want prod and staging", envs)
	}
}

// TestARMServesNICs: a VM's NIC is found by its path in any case, carries
// the VM's accelerated networking setting and points back at the VM; an
// unknown NIC is ARM's 404.
func TestARMServesNICs(t *testing.T) {
	sim := NewARM(100)
	srv := httptest.NewServer(sim)
	defer srv.Close()
	const sub = "00000000-0000-0000-0000-0000000000aa"
	for i := range 50 {
		sim.Put(VMSpec{Subscription: sub, ResourceGroup: "rg-cvm", Name: fmt.Sprintf("vm-%03d", i), VMID: NewVMID(), AcceleratedNIC: i == 7})
	}
	get := func(path string) (int, map[string]any) {
		t.Helper()
		resp, err := http.Get(srv.URL + path + "?api-version=2024-05-01")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body
	}
	for _, tc := range []struct {
		name, path  string
		status      int
		accelerated bool
		vm          string
	}{
		{"as named", "/subscriptions/" + sub + "/resourceGroups/rg-cvm/providers/Microsoft.Network/networkInterfaces/vm-007-nic", 200, true, "vm-007"},
		{"any case", "/SUBSCRIPTIONS/" + sub + "/resourcegroups/RG-CVM/providers/microsoft.network/networkinterfaces/VM-008-NIC", 200, false, "vm-008"},
		{"unknown VM", "/subscriptions/" + sub + "/resourceGroups/rg-cvm/providers/Microsoft.Network/networkInterfaces/vm-999-nic", 404, false, ""},
		{"not a VM's NIC", "/subscriptions/" + sub + "/resourceGroups/rg-cvm/providers/Microsoft.Network/networkInterfaces/vm-007", 404, false, ""},
		{"other group", "/subscriptions/" + sub + "/resourceGroups/rg-other/providers/Microsoft.Network/networkInterfaces/vm-007-nic", 404, false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body := get(tc.path)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %v", status, tc.status, body)
			}
			if status != 200 {
				return
			}
			props, _ := body["properties"].(map[string]any)
			if got, _ := props["enableAcceleratedNetworking"].(bool); got != tc.accelerated {
				t.Errorf("enableAcceleratedNetworking %v, want %v", got, tc.accelerated)
			}
			vm, _ := props["virtualMachine"].(map[string]any)
			if id, _ := vm["id"].(string); !strings.HasSuffix(id, "/virtualMachines/"+tc.vm) {
				t.Errorf("virtualMachine.id %q, want the VM %s", id, tc.vm)
			}
		})
	}
}
