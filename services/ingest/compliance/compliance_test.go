package compliance_test

import (
	"context"
	"slices"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/internal/armfake"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

const (
	sub = "00000000-0000-4000-8000-00000000c0de"
	rg  = "cvm"
)

func nicID(name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Network/networkInterfaces/" + name
}

func diskID(name string) string {
	return "/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/disks/" + name
}

// TestFindingsThroughFakeARM reads each VM variant through the armcompute
// and armnetwork fake servers with the enrichment client, then evaluates
// it: every §5 finding appears exactly when its condition holds.
func TestFindingsThroughFakeARM(t *testing.T) {
	tests := []struct {
		name   string
		mod    func(vm *armcompute.VirtualMachine, fa *armfake.ARM)
		policy func(*compliance.Policy)
		want   map[string]events.Severity
	}{
		{name: "compliant", want: map[string]events.Severity{}},
		{name: "trusted launch instead of confidential", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.SecurityProfile.SecurityType = to.Ptr(armcompute.SecurityTypesTrustedLaunch)
		}, want: map[string]events.Severity{compliance.CodeSecurityType: events.SeverityCritical}},
		{name: "no security profile", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.SecurityProfile = nil
		}, want: map[string]events.Severity{compliance.CodeSecurityType: events.SeverityCritical, compliance.CodeVTPM: events.SeverityCritical, compliance.CodeSecureBoot: events.SeverityHigh}},
		{name: "general purpose size", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.HardwareProfile.VMSize = to.Ptr(armcompute.VirtualMachineSizeTypesStandardD4SV3)
		}, want: map[string]events.Severity{compliance.CodeSize: events.SeverityCritical}},
		{name: "newer series added by policy", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.HardwareProfile.VMSize = to.Ptr(armcompute.VirtualMachineSizeTypes("Standard_DC8as_v6"))
		}, policy: func(p *compliance.Policy) { p.Series = append(p.Series, "DCasv6") }, want: map[string]events.Severity{}},
		{name: "vtpm off", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.SecurityProfile.UefiSettings.VTpmEnabled = to.Ptr(false)
		}, want: map[string]events.Severity{compliance.CodeVTPM: events.SeverityCritical}},
		{name: "secure boot off with confidential disk encryption", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.SecurityProfile.UefiSettings.SecureBootEnabled = to.Ptr(false)
		}, want: map[string]events.Severity{compliance.CodeSecureBoot: events.SeverityHigh}},
		{name: "guest state only, secure boot off is fine", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.OSDisk.ManagedDisk.SecurityProfile = &armcompute.VMDiskSecurityProfile{SecurityEncryptionType: to.Ptr(armcompute.SecurityEncryptionTypesVMGuestStateOnly)}
			vm.Properties.SecurityProfile.UefiSettings.SecureBootEnabled = to.Ptr(false)
		}, want: map[string]events.Severity{compliance.CodeDiskGuestStateOnly: events.SeverityWarning}},
		{name: "guest state only when policy requires encryption", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.OSDisk.ManagedDisk.SecurityProfile = &armcompute.VMDiskSecurityProfile{SecurityEncryptionType: to.Ptr(armcompute.SecurityEncryptionTypesVMGuestStateOnly)}
		}, policy: func(p *compliance.Policy) { p.RequireDiskEncryption = true },
			want: map[string]events.Severity{compliance.CodeDiskGuestStateOnly: events.SeverityHigh}},
		{name: "no encryption type", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.OSDisk.ManagedDisk.SecurityProfile = nil
		}, want: map[string]events.Severity{compliance.CodeDiskEncryptionNone: events.SeverityHigh}},
		{name: "platform managed key", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.OSDisk.ManagedDisk.SecurityProfile.DiskEncryptionSet = nil
		}, want: map[string]events.Severity{compliance.CodeDiskPlatformKey: events.SeverityInfo}},
		{name: "platform managed key when policy requires CMK", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.OSDisk.ManagedDisk.SecurityProfile.DiskEncryptionSet = nil
		}, policy: func(p *compliance.Policy) { p.RequireCMK = true }, want: map[string]events.Severity{compliance.CodeDiskPlatformKey: events.SeverityHigh}},
		{name: "scale set with confidential disk encryption", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.VirtualMachineScaleSet = &armcompute.SubResource{ID: to.Ptr("/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/virtualMachineScaleSets/ss")}
		}, want: map[string]events.Severity{compliance.CodeScaleSetEncryption: events.SeverityHigh}},
		{name: "ultra ssd capability", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.AdditionalCapabilities = &armcompute.AdditionalCapabilities{UltraSSDEnabled: to.Ptr(true)}
		}, want: map[string]events.Severity{compliance.CodeUltraDisk: events.SeverityHigh}},
		{name: "ultra data disk (disk SKU read from ARM)", mod: func(vm *armcompute.VirtualMachine, fa *armfake.ARM) {
			vm.Properties.StorageProfile.DataDisks = []*armcompute.DataDisk{{Lun: to.Ptr[int32](0), ManagedDisk: &armcompute.ManagedDiskParameters{ID: to.Ptr(diskID("ultra"))}}}
			fa.PutDisk(&armcompute.Disk{ID: to.Ptr(diskID("ultra")), SKU: &armcompute.DiskSKU{Name: to.Ptr(armcompute.DiskStorageAccountTypesUltraSSDLRS)}, Properties: &armcompute.DiskProperties{}})
		}, want: map[string]events.Severity{compliance.CodeUltraDisk: events.SeverityHigh}},
		{name: "shared data disk", mod: func(vm *armcompute.VirtualMachine, fa *armfake.ARM) {
			vm.Properties.StorageProfile.DataDisks = []*armcompute.DataDisk{
				{Lun: to.Ptr[int32](0), ManagedDisk: &armcompute.ManagedDiskParameters{ID: to.Ptr(diskID("shared"))}},
				{Lun: to.Ptr[int32](1), ManagedDisk: &armcompute.ManagedDiskParameters{ID: to.Ptr(diskID("private"))}},
			}
			fa.PutDisk(&armcompute.Disk{ID: to.Ptr(diskID("shared")), Properties: &armcompute.DiskProperties{MaxShares: to.Ptr[int32](2)}})
			fa.PutDisk(&armcompute.Disk{ID: to.Ptr(diskID("private")), Properties: &armcompute.DiskProperties{MaxShares: to.Ptr[int32](1)}})
		}, want: map[string]events.Severity{compliance.CodeSharedDisk: events.SeverityHigh}},
		{name: "accelerated networking on the NIC", mod: func(vm *armcompute.VirtualMachine, fa *armfake.ARM) {
			fa.PutNIC(armfake.NIC(*vm.Properties.NetworkProfile.NetworkInterfaces[0].ID, true))
		}, want: map[string]events.Severity{compliance.CodeAcceleratedNet: events.SeverityHigh}},
		{name: "accelerated networking in the VM model", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.NetworkProfile = &armcompute.NetworkProfile{NetworkInterfaceConfigurations: []*armcompute.VirtualMachineNetworkInterfaceConfiguration{
				{Name: to.Ptr("nic0"), Properties: &armcompute.VirtualMachineNetworkInterfaceConfigurationProperties{EnableAcceleratedNetworking: to.Ptr(true)}},
			}}
		}, want: map[string]events.Severity{compliance.CodeAcceleratedNet: events.SeverityHigh}},
		{name: "dedicated host", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.Host = &armcompute.SubResource{ID: to.Ptr("/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/hostGroups/hg/hosts/h1")}
		}, want: map[string]events.Severity{compliance.CodeDedicatedHost: events.SeverityHigh}},
		{name: "dedicated host group", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.HostGroup = &armcompute.SubResource{ID: to.Ptr("/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/hostGroups/hg")}
		}, want: map[string]events.Severity{compliance.CodeDedicatedHost: events.SeverityHigh}},
		{name: "boot diagnostics screenshots", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.DiagnosticsProfile = &armcompute.DiagnosticsProfile{BootDiagnostics: &armcompute.BootDiagnostics{Enabled: to.Ptr(true)}}
		}, want: map[string]events.Severity{compliance.CodeBootScreenshots: events.SeverityWarning}},
		{name: "azure backup extension", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Resources = []*armcompute.VirtualMachineExtension{{Properties: &armcompute.VirtualMachineExtensionProperties{Publisher: to.Ptr("Microsoft.Azure.RecoveryServices"), Type: to.Ptr("VMSnapshotLinux")}}}
		}, want: map[string]events.Severity{compliance.CodeBackup: events.SeverityWarning}},
		{name: "site recovery extension", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Resources = []*armcompute.VirtualMachineExtension{{Properties: &armcompute.VirtualMachineExtensionProperties{Publisher: to.Ptr("Microsoft.Azure.RecoveryServices.SiteRecovery"), Type: to.Ptr("LinuxAgent")}}}
		}, want: map[string]events.Severity{compliance.CodeSiteRecovery: events.SeverityWarning}},
		{name: "azure batch pool", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Tags = map[string]*string{"BatchAccountName": to.Ptr("acct")}
		}, want: map[string]events.Severity{compliance.CodeBatch: events.SeverityWarning}},
		{name: "unlisted image", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.ImageReference = &armcompute.ImageReference{Publisher: to.Ptr("Debian"), Offer: to.Ptr("debian-12"), SKU: to.Ptr("12-gen2")}
		}, want: map[string]events.Severity{compliance.CodeOSImage: events.SeverityWarning}},
		{name: "gallery image", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.ImageReference = &armcompute.ImageReference{ID: to.Ptr("/subscriptions/" + sub + "/resourceGroups/" + rg + "/providers/Microsoft.Compute/galleries/g/images/i")}
		}, want: map[string]events.Severity{compliance.CodeOSImage: events.SeverityWarning}},
		{name: "ubuntu 20.04 on TDX", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.HardwareProfile.VMSize = to.Ptr(armcompute.VirtualMachineSizeTypes("Standard_DC4es_v5"))
			vm.Properties.StorageProfile.ImageReference = &armcompute.ImageReference{Publisher: to.Ptr("Canonical"), Offer: to.Ptr("0001-com-ubuntu-confidential-vm-focal"), SKU: to.Ptr("20_04-lts-cvm")}
		}, want: map[string]events.Severity{compliance.CodeOSImagePlatform: events.SeverityWarning}},
		{name: "windows server 2022 azure edition", mod: func(vm *armcompute.VirtualMachine, _ *armfake.ARM) {
			vm.Properties.StorageProfile.ImageReference = &armcompute.ImageReference{Publisher: to.Ptr("MicrosoftWindowsServer"), Offer: to.Ptr("WindowsServer"), SKU: to.Ptr("2022-datacenter-azure-edition")}
		}, want: map[string]events.Severity{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fa := armfake.New()
			vm := armfake.CompliantVM(sub, rg, "vm1", "26f8bc30-774e-4290-8e7a-535f3b672aee")
			fa.PutNIC(armfake.NIC(nicID("vm1-nic"), false))
			if tt.mod != nil {
				tt.mod(vm, fa)
			}
			fa.PutVM(vm)
			client, err := arm.NewClient(arm.Config{Credential: fa.Credential(), ClientOptions: fa.ClientOptions()})
			if err != nil {
				t.Fatal(err)
			}
			facts, err := client.Facts(context.Background(), normalize.NewVMID(sub, rg, "vm1"))
			if err != nil {
				t.Fatal(err)
			}
			policy := compliance.DefaultPolicy()
			if tt.policy != nil {
				tt.policy(&policy)
			}
			got := compliance.Evaluate(facts, policy)
			gotMap := map[string]events.Severity{}
			for _, f := range got {
				gotMap[f.Code] = f.Severity
				if f.Message == "" || f.Field == "" {
					t.Errorf("finding %s without message or field", f.Code)
				}
			}
			if len(gotMap) != len(tt.want) {
				t.Fatalf("findings %v, want %v", got, tt.want)
			}
			for code, sev := range tt.want {
				if gotMap[code] != sev {
					t.Errorf("finding %s: severity %q, want %q (all: %v)", code, gotMap[code], sev, got)
				}
			}
			if !slices.IsSortedFunc(got, func(a, b events.Finding) int { return rank(a.Severity) - rank(b.Severity) }) {
				t.Error("findings not sorted by severity")
			}
		})
	}
}

func rank(s events.Severity) int {
	return slices.Index([]events.Severity{events.SeverityCritical, events.SeverityHigh, events.SeverityWarning, events.SeverityInfo}, s)
}

func TestLiveMigrationFinding(t *testing.T) {
	vm := armfake.CompliantVM(sub, rg, "vm1", "id")
	got := compliance.Evaluate(compliance.Facts{VM: vm, LiveMigration: true}, compliance.DefaultPolicy())
	if len(got) != 1 || got[0].Code != compliance.CodeLiveMigration || got[0].Severity != events.SeverityHigh {
		t.Fatalf("findings %v", got)
	}
}

func TestSeriesAndPlatform(t *testing.T) {
	tests := []struct{ size, series, platform string }{
		{"Standard_DC4as_v5", "DCasv5", compliance.PlatformSNP},
		{"Standard_DC16ads_v5", "DCadsv5", compliance.PlatformSNP},
		{"Standard_EC32es_v5", "ECesv5", compliance.PlatformTDX},
		{"Standard_EC8eds_v5", "ECedsv5", compliance.PlatformTDX},
		{"Standard_DC16-8as_v5", "DCasv5", compliance.PlatformSNP},
		{"standard_dc2as_v5", "DCasv5", compliance.PlatformSNP},
		{"Standard_D4as_v5", "Dasv5", ""},
		{"Standard_DC2s_v2", "DCsv2", ""},
		{"Basic_A1", "", ""},
	}
	for _, tt := range tests {
		if s := compliance.Series(tt.size); s != tt.series {
			t.Errorf("Series(%s) = %q, want %q", tt.size, s, tt.series)
		}
		if p := compliance.Platform(tt.size); p != tt.platform {
			t.Errorf("Platform(%s) = %q, want %q", tt.size, p, tt.platform)
		}
	}
	if !compliance.DefaultPolicy().ConfidentialSize("Standard_EC48ads_v5") || compliance.DefaultPolicy().ConfidentialSize("Standard_D4as_v5") {
		t.Error("ConfidentialSize")
	}
}
