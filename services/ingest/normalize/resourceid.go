package normalize

import (
	"fmt"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
)

// VMID identifies a virtual machine by its ARM resource ID.
type VMID struct {
	ResourceID    string // canonical spelling of the fixed segments
	Subscription  string
	ResourceGroup string
	Name          string
}

// Key is the VM key of docs/design.md §6.
func (v VMID) Key() string { return events.VMKey(v.ResourceID) }

// NewVMID builds the ID of VM name in a resource group.
func NewVMID(subscription, resourceGroup, name string) VMID {
	return VMID{
		ResourceID:    "/subscriptions/" + subscription + "/resourceGroups/" + resourceGroup + "/providers/" + VMResourceType + "/" + name,
		Subscription:  subscription,
		ResourceGroup: resourceGroup,
		Name:          name,
	}
}

// ParseVMID reads a VM's ARM resource ID, or the ID of a resource below a VM
// (child is then the rest of the path, such as "extensions/ext1"). Fixed
// segments match case-insensitively ("resourcegroups" as Event Grid
// subjects spell it); the ID is returned with the canonical spelling. An ID
// of any other resource type wraps ErrIgnored; a VM ID with missing parts
// wraps ErrMalformed.
func ParseVMID(id string) (vm VMID, child string, err error) {
	s := strings.TrimSpace(id)
	if s == "" {
		return VMID{}, "", fmt.Errorf("%w: no resource ID", ErrMalformed)
	}
	if len(s) > 1024 {
		return VMID{}, "", fmt.Errorf("%w: resource ID longer than 1024 characters", ErrMalformed)
	}
	parts := strings.Split(strings.Trim(s, "/"), "/")
	// subscriptions/<s>/resourceGroups/<g>/providers/Microsoft.Compute/virtualMachines/<n>[/...]
	if len(parts) < 6 || !strings.EqualFold(parts[0], "subscriptions") ||
		!strings.EqualFold(parts[2], "resourceGroups") || !strings.EqualFold(parts[4], "providers") {
		return VMID{}, "", fmt.Errorf("%w: %q is not a resource in a resource group", ErrIgnored, clip(s))
	}
	if len(parts) < 8 || !strings.EqualFold(parts[5], "Microsoft.Compute") || !strings.EqualFold(parts[6], "virtualMachines") {
		return VMID{}, "", fmt.Errorf("%w: %q is not a virtual machine", ErrIgnored, clip(s))
	}
	sub, rg, name := parts[1], parts[3], parts[7]
	if sub == "" || rg == "" || name == "" {
		return VMID{}, "", fmt.Errorf("%w: %q has an empty subscription, group or name", ErrMalformed, clip(s))
	}
	for _, p := range []string{sub, rg, name} {
		if strings.ContainsAny(p, "\x00\n\r\t ") {
			return VMID{}, "", fmt.Errorf("%w: %q contains whitespace or control characters", ErrMalformed, clip(s))
		}
	}
	return NewVMID(sub, rg, name), strings.Join(parts[8:], "/"), nil
}

func clip(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
