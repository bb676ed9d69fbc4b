package appraise

// Reason codes of validation against a policy: the prefix names the rule
// (policy, identity, freshness). Verdicts also carry the reason codes of
// verification (package evidence: bundle, hcl, snp, tdx, binding, tpm,
// eventlog, verifier).
const (
	ReasonPolicyPlatform       = "policy.platform_not_allowed"
	ReasonPolicyProduct        = "policy.product_not_allowed"
	ReasonPolicyDebug          = "policy.debug_enabled"
	ReasonPolicyMigrationAgent = "policy.migration_agent_enabled"
	ReasonPolicySMT            = "policy.smt_enabled"
	ReasonPolicyVMPL           = "policy.vmpl_mismatch"
	ReasonPolicyTCB            = "policy.tcb_too_low"
	ReasonPolicyTCBStatus      = "policy.tcb_status"
	ReasonPolicyTCBUnknown     = "policy.tcb_status_unknown"
	ReasonPolicyMeasurement    = "policy.measurement_not_allowed"
	ReasonPolicyMRSEAM         = "policy.mrseam_not_allowed"
	ReasonPolicyTDAttributes   = "policy.td_attributes_not_allowed"
	ReasonPolicyPCR            = "policy.pcr_mismatch"
	ReasonPolicySecureBoot     = "policy.secure_boot_disabled"
	ReasonPolicyTPMDisabled    = "policy.tpm_disabled"
	ReasonPolicyConsole        = "policy.console_enabled"
	ReasonPolicyEventLog       = "policy.event_log_required"
	ReasonPolicyEvidenceAge    = "policy.evidence_too_old"
	ReasonPolicyEvidenceFuture = "policy.evidence_from_future"

	ReasonIdentityVMIDMismatch  = "identity.vmid_mismatch"
	ReasonIdentityVMIDMissing   = "identity.vmid_missing"
	ReasonIdentityVMIDUnknown   = "identity.vmid_unknown"
	ReasonIdentityVMKeyMismatch = "identity.vm_key_mismatch"

	ReasonFreshnessNonceUnchecked = "freshness.nonce_not_checked"
)
