// Package compliance checks a VM's ARM configuration against what Azure
// confidential VMs require and support (docs/design.md §11, from the product
// brief): confidential security type and size series, vTPM and secure boot,
// confidential OS disk encryption and its key, unsupported features (scale
// sets with confidential disk encryption, Ultra and shared disks,
// accelerated networking, dedicated hosts, boot diagnostics screenshots,
// live migration, Azure Batch, Backup and Site Recovery) and the OS image.
package compliance

import (
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Finding codes. They are stable: alerts and dashboards match on them.
const (
	CodeSecurityType       = "security_type.not_confidential"
	CodeSize               = "size.not_confidential"
	CodeVTPM               = "vtpm.disabled"
	CodeSecureBoot         = "secure_boot.disabled"
	CodeDiskEncryptionNone = "disk_encryption.missing"
	CodeDiskGuestStateOnly = "disk_encryption.guest_state_only"
	CodeDiskPlatformKey    = "disk_encryption.platform_managed_key"
	CodeScaleSetEncryption = "scale_set.confidential_disk_encryption"
	CodeUltraDisk          = "disk.ultra"
	CodeSharedDisk         = "disk.shared"
	CodeAcceleratedNet     = "network.accelerated_networking"
	CodeDedicatedHost      = "host.dedicated"
	CodeBootScreenshots    = "boot_diagnostics.screenshots"
	CodeLiveMigration      = "live_migration.observed"
	CodeBatch              = "service.azure_batch"
	CodeBackup             = "service.azure_backup"
	CodeSiteRecovery       = "service.site_recovery"
	CodeOSImage            = "os_image.unsupported"
	CodeOSImagePlatform    = "os_image.platform_unsupported"
	CodeUnverifiable       = "config.unverifiable"
)

// Platforms, as in the evidence bundle's "platform".
const (
	PlatformSNP = "azure-sev-snp"
	PlatformTDX = "azure-tdx"
)

// ImageRule recognises a supported OS image by its marketplace reference.
type ImageRule struct {
	Name          string   `json:"name" yaml:"name"`
	Publisher     string   `json:"publisher" yaml:"publisher"`           // equal, ignoring case
	OfferContains []string `json:"offer_contains" yaml:"offer_contains"` // every one, ignoring case
	SKUContains   []string `json:"sku_contains" yaml:"sku_contains"`     // any one, ignoring case (empty: any SKU)
	Platforms     []string `json:"platforms" yaml:"platforms"`           // PlatformSNP, PlatformTDX
}

// Policy says what is acceptable. The zero value is not useful; start from
// DefaultPolicy.
type Policy struct {
	// Series are the confidential size series (e.g. "DCasv5") or exact
	// size names (e.g. "Standard_NCC40ads_H100_v5").
	Series []string `json:"series" yaml:"series"`
	// RequireDiskEncryption makes an OS disk without confidential
	// encryption before first boot (VMGuestStateOnly) a high finding.
	RequireDiskEncryption bool `json:"require_disk_encryption" yaml:"require_disk_encryption"`
	// RequireCMK makes a platform-managed disk key a high finding.
	RequireCMK bool `json:"require_cmk" yaml:"require_cmk"`
	// Images are the supported OS images; others get a warning.
	Images []ImageRule `json:"images" yaml:"images"`
}

// DefaultPolicy is the product brief's list.
func DefaultPolicy() Policy {
	both := []string{PlatformSNP, PlatformTDX}
	return Policy{
		Series: []string{"DCasv5", "DCesv5", "DCadsv5", "DCedsv5", "ECasv5", "ECesv5", "ECadsv5", "ECedsv5"},
		Images: []ImageRule{
			{Name: "Ubuntu 20.04 LTS", Publisher: "Canonical", OfferContains: []string{"focal"}, SKUContains: []string{"cvm"}, Platforms: []string{PlatformSNP}},
			{Name: "Ubuntu 22.04 LTS", Publisher: "Canonical", OfferContains: []string{"jammy"}, SKUContains: []string{"cvm"}, Platforms: both},
			{Name: "RHEL 9.3", Publisher: "RedHat", OfferContains: []string{"rhel-cvm"}, SKUContains: []string{"9_3"}, Platforms: both},
			{Name: "SUSE Linux Enterprise Server 15 SP5", Publisher: "SUSE", OfferContains: []string{"sles", "15-sp5"}, Platforms: both},
			{Name: "Windows 11 22H2", Publisher: "MicrosoftWindowsDesktop", OfferContains: []string{"windows-cvm"}, SKUContains: []string{"22h2"}, Platforms: both},
			{Name: "Windows Server 2019 Datacenter", Publisher: "MicrosoftWindowsServer", OfferContains: []string{"windows"}, SKUContains: []string{"2019-datacenter"}, Platforms: both},
			{Name: "Windows Server 2022 Datacenter", Publisher: "MicrosoftWindowsServer", OfferContains: []string{"windows"}, SKUContains: []string{"2022-datacenter"}, Platforms: both},
		},
	}
}

// Facts is what is known about a VM: its ARM model (with instance view) and
// the results of lookups the model itself does not answer.
type Facts struct {
	VM *armcompute.VirtualMachine
	// AcceleratedNICs lists the IDs of the VM's network interfaces that
	// have accelerated networking, as read from the NIC resources.
	AcceleratedNICs []string
	// SharedDisks lists managed disks attached to the VM with maxShares > 1.
	SharedDisks []string
	// UltraDisks lists managed disks with the UltraSSD_LRS SKU.
	UltraDisks []string
	// LiveMigration is set when Azure reported a live migration of the VM.
	LiveMigration bool
}

var sizeRE = regexp.MustCompile(`^(?i)standard_([a-z]+)(\d+)(?:-\d+)?([a-z]*)_v(\d+)$`)

// Series returns the size series of an ARM size name, such as "DCasv5" for
// "Standard_DC4as_v5", or "" when the name does not follow the pattern.
func Series(size string) string {
	m := sizeRE.FindStringSubmatch(size)
	if m == nil {
		return ""
	}
	return strings.ToUpper(m[1]) + strings.ToLower(m[3]) + "v" + m[4]
}

// Platform returns the TEE of a confidential size: the "a" (AMD) series run
// SEV-SNP, the "e" (Intel) series TDX; "" when the size is neither.
func Platform(size string) string {
	m := sizeRE.FindStringSubmatch(size)
	if m == nil {
		return ""
	}
	family, features := strings.ToUpper(m[1]), strings.ToLower(m[3])
	if family != "DC" && family != "EC" && !strings.HasSuffix(family, "CC") {
		return ""
	}
	switch {
	case strings.Contains(features, "a"):
		return PlatformSNP
	case strings.Contains(features, "e"):
		return PlatformTDX
	}
	return ""
}

// ConfidentialSize reports whether size is allowed by the policy.
func (p Policy) ConfidentialSize(size string) bool {
	series := Series(size)
	for _, s := range p.Series {
		if strings.EqualFold(s, size) || (series != "" && strings.EqualFold(s, series)) {
			return true
		}
	}
	return false
}

// Evaluate returns the findings for f, most severe first.
func Evaluate(f Facts, p Policy) []events.Finding {
	var out []events.Finding
	add := func(code string, sev events.Severity, field, format string, args ...any) {
		out = append(out, events.Finding{Code: code, Severity: sev, Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if f.VM == nil || f.VM.Properties == nil {
		add(CodeUnverifiable, events.SeverityHigh, "properties", "the VM's ARM model has no properties; its configuration cannot be checked")
		return out
	}
	props := f.VM.Properties
	sec := props.SecurityProfile
	if sec == nil {
		sec = &armcompute.SecurityProfile{}
	}
	uefi := sec.UefiSettings
	if uefi == nil {
		uefi = &armcompute.UefiSettings{}
	}

	// Security type.
	if st := val(sec.SecurityType); st != armcompute.SecurityTypesConfidentialVM {
		add(CodeSecurityType, events.SeverityCritical, "properties.securityProfile.securityType",
			"security type is %q, not ConfidentialVM: the VM has no hardware isolation to attest", orNone(string(st)))
	}

	// Size.
	size := ""
	if props.HardwareProfile != nil {
		size = string(val(props.HardwareProfile.VMSize))
	}
	if !p.ConfidentialSize(size) {
		add(CodeSize, events.SeverityCritical, "properties.hardwareProfile.vmSize",
			"size %q is not a confidential series (allowed: %s)", orNone(size), strings.Join(p.Series, ", "))
	}

	// vTPM and secure boot.
	if !val(uefi.VTpmEnabled) {
		add(CodeVTPM, events.SeverityCritical, "properties.securityProfile.uefiSettings.vTpmEnabled",
			"vTPM is not enabled: the VM cannot produce TPM quotes for attestation")
	}

	// Confidential OS disk encryption.
	var osDisk *armcompute.OSDisk
	if props.StorageProfile != nil {
		osDisk = props.StorageProfile.OSDisk
	}
	var encType armcompute.SecurityEncryptionTypes
	var des *armcompute.DiskEncryptionSetParameters
	if osDisk != nil && osDisk.ManagedDisk != nil && osDisk.ManagedDisk.SecurityProfile != nil {
		encType = val(osDisk.ManagedDisk.SecurityProfile.SecurityEncryptionType)
		des = osDisk.ManagedDisk.SecurityProfile.DiskEncryptionSet
	}
	const encField = "properties.storageProfile.osDisk.managedDisk.securityProfile.securityEncryptionType"
	fullEncryption := encType == armcompute.SecurityEncryptionTypesDiskWithVMGuestState
	switch encType {
	case armcompute.SecurityEncryptionTypesDiskWithVMGuestState:
		if des == nil || val(des.ID) == "" {
			sev := events.SeverityInfo
			if p.RequireCMK {
				sev = events.SeverityHigh
			}
			add(CodeDiskPlatformKey, sev, "properties.storageProfile.osDisk.managedDisk.securityProfile.diskEncryptionSet",
				"the confidential OS disk encryption uses a platform-managed key (PMK), not a customer-managed key (CMK)")
		}
	case armcompute.SecurityEncryptionTypesVMGuestStateOnly:
		sev := events.SeverityWarning
		if p.RequireDiskEncryption {
			sev = events.SeverityHigh
		}
		add(CodeDiskGuestStateOnly, sev, encField,
			"only the VM guest state is encrypted (VMGuestStateOnly): the OS disk has no confidential encryption before first boot")
	default:
		add(CodeDiskEncryptionNone, events.SeverityHigh, encField,
			"the OS disk has no confidential security encryption type (%q)", orNone(string(encType)))
	}
	if fullEncryption && !val(uefi.SecureBootEnabled) {
		add(CodeSecureBoot, events.SeverityHigh, "properties.securityProfile.uefiSettings.secureBootEnabled",
			"secure boot is disabled although the OS disk has confidential encryption")
	}

	// Unsupported features.
	if props.VirtualMachineScaleSet != nil && val(props.VirtualMachineScaleSet.ID) != "" && fullEncryption {
		add(CodeScaleSetEncryption, events.SeverityHigh, "properties.virtualMachineScaleSet",
			"the VM belongs to scale set %s and has confidential OS disk encryption, which scale sets do not support", val(props.VirtualMachineScaleSet.ID))
	}
	ultra := slices.Clone(f.UltraDisks)
	if props.AdditionalCapabilities != nil && val(props.AdditionalCapabilities.UltraSSDEnabled) {
		ultra = append(ultra, "additionalCapabilities.ultraSSDEnabled")
	}
	if props.StorageProfile != nil {
		for _, d := range props.StorageProfile.DataDisks {
			if d != nil && d.ManagedDisk != nil && val(d.ManagedDisk.StorageAccountType) == armcompute.StorageAccountTypesUltraSSDLRS {
				ultra = append(ultra, diskName(d))
			}
		}
	}
	if ultra = dedupe(ultra); len(ultra) > 0 {
		add(CodeUltraDisk, events.SeverityHigh, "properties.additionalCapabilities.ultraSSDEnabled",
			"Ultra disks are not supported with confidential VMs: %s", strings.Join(ultra, ", "))
	}
	if shared := dedupe(f.SharedDisks); len(shared) > 0 {
		add(CodeSharedDisk, events.SeverityHigh, "properties.storageProfile.dataDisks",
			"shared disks are not supported with confidential VMs: %s", strings.Join(shared, ", "))
	}
	accel := slices.Clone(f.AcceleratedNICs)
	if props.NetworkProfile != nil {
		for _, c := range props.NetworkProfile.NetworkInterfaceConfigurations {
			if c != nil && c.Properties != nil && val(c.Properties.EnableAcceleratedNetworking) {
				accel = append(accel, val(c.Name))
			}
		}
	}
	if accel = dedupe(accel); len(accel) > 0 {
		add(CodeAcceleratedNet, events.SeverityHigh, "properties.networkProfile",
			"accelerated networking is not supported with confidential VMs: %s", strings.Join(accel, ", "))
	}
	if (props.Host != nil && val(props.Host.ID) != "") || (props.HostGroup != nil && val(props.HostGroup.ID) != "") {
		add(CodeDedicatedHost, events.SeverityHigh, "properties.host",
			"the VM is placed on a dedicated host, which confidential VMs do not support")
	}
	if props.DiagnosticsProfile != nil && props.DiagnosticsProfile.BootDiagnostics != nil && val(props.DiagnosticsProfile.BootDiagnostics.Enabled) {
		add(CodeBootScreenshots, events.SeverityWarning, "properties.diagnosticsProfile.bootDiagnostics.enabled",
			"boot diagnostics is enabled; screenshots are not supported with confidential VMs")
	}
	if f.LiveMigration {
		add(CodeLiveMigration, events.SeverityHigh, "resourceHealth.annotations",
			"Azure reported a live migration of the VM, which confidential VMs do not support")
	}
	services(f.VM, add)

	// OS image.
	image(props, Platform(size), p, add)

	slices.SortStableFunc(out, func(a, b events.Finding) int {
		return cmp.Or(cmp.Compare(rank(a.Severity), rank(b.Severity)), strings.Compare(a.Code, b.Code))
	})
	return out
}

// Compliant reports whether no finding is above info.
func Compliant(fs []events.Finding) bool {
	for _, f := range fs {
		if f.Severity != events.SeverityInfo {
			return false
		}
	}
	return true
}

// services flags Azure services that confidential VMs do not support, as
// seen from the VM's extensions (Backup and Site Recovery install theirs)
// and tags (Azure Batch marks the VMs of user-subscription pools).
func services(vm *armcompute.VirtualMachine, add func(code string, sev events.Severity, field, format string, args ...any)) {
	type ext struct{ publisher, typ string }
	var exts []ext
	for _, r := range vm.Resources {
		if r != nil && r.Properties != nil {
			exts = append(exts, ext{val(r.Properties.Publisher), val(r.Properties.Type)})
		}
	}
	if iv := vm.Properties.InstanceView; iv != nil {
		for _, e := range iv.Extensions {
			if e != nil {
				// The instance view's type is "<publisher>.<type>".
				exts = append(exts, ext{val(e.Type), ""})
			}
		}
	}
	var backup, asr, batch bool
	for _, e := range exts {
		p := strings.ToLower(e.publisher)
		t := strings.ToLower(e.typ)
		switch {
		case strings.HasPrefix(p, "microsoft.azure.recoveryservices.siterecovery"):
			asr = true
		case strings.HasPrefix(p, "microsoft.azure.recoveryservices"), strings.HasPrefix(t, "vmsnapshot"):
			backup = true
		case strings.HasPrefix(p, "microsoft.azure.batch"):
			batch = true
		}
	}
	for k := range vm.Tags {
		if strings.EqualFold(k, "BatchAccountName") || strings.EqualFold(k, "BatchPoolName") {
			batch = true
		}
	}
	if backup {
		add(CodeBackup, events.SeverityWarning, "resources", "Azure Backup is configured (VMSnapshot extension); it is not supported with confidential VMs")
	}
	if asr {
		add(CodeSiteRecovery, events.SeverityWarning, "resources", "Azure Site Recovery is configured; it is not supported with confidential VMs")
	}
	if batch {
		add(CodeBatch, events.SeverityWarning, "resources", "the VM is managed by Azure Batch, which does not support confidential VMs")
	}
}

func image(props *armcompute.VirtualMachineProperties, platform string, p Policy, add func(code string, sev events.Severity, field, format string, args ...any)) {
	const field = "properties.storageProfile.imageReference"
	var ref *armcompute.ImageReference
	if props.StorageProfile != nil {
		ref = props.StorageProfile.ImageReference
	}
	if ref == nil || val(ref.Publisher) == "" {
		src := "no marketplace image reference"
		if ref != nil {
			src = "image " + orNone(cmp.Or(val(ref.ID), val(ref.SharedGalleryImageID), val(ref.CommunityGalleryImageID)))
		}
		add(CodeOSImage, events.SeverityWarning, field,
			"the OS image cannot be matched to a supported confidential VM image (%s)", src)
		return
	}
	desc := val(ref.Publisher) + ":" + val(ref.Offer) + ":" + val(ref.SKU)
	for _, r := range p.Images {
		if !r.matches(ref) {
			continue
		}
		if platform != "" && !slices.Contains(r.Platforms, platform) {
			add(CodeOSImagePlatform, events.SeverityWarning, field,
				"%s (%s) is not supported on %s", r.Name, desc, platform)
		}
		return
	}
	add(CodeOSImage, events.SeverityWarning, field, "OS image %s is not in the supported list", desc)
}

func (r ImageRule) matches(ref *armcompute.ImageReference) bool {
	if !strings.EqualFold(r.Publisher, val(ref.Publisher)) {
		return false
	}
	offer, sku := strings.ToLower(val(ref.Offer)), strings.ToLower(val(ref.SKU))
	for _, o := range r.OfferContains {
		if !strings.Contains(offer, strings.ToLower(o)) {
			return false
		}
	}
	if len(r.SKUContains) == 0 {
		return true
	}
	for _, s := range r.SKUContains {
		if strings.Contains(sku, strings.ToLower(s)) {
			return true
		}
	}
	return false
}

func rank(s events.Severity) int {
	switch s {
	case events.SeverityCritical:
		return 0
	case events.SeverityHigh:
		return 1
	case events.SeverityWarning:
		return 2
	}
	return 3
}

func diskName(d *armcompute.DataDisk) string {
	if n := val(d.Name); n != "" {
		return n
	}
	return "lun " + strconv.Itoa(int(val(d.Lun)))
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func val[T any](p *T) T {
	if p == nil {
		var z T
		return z
	}
	return *p
}
