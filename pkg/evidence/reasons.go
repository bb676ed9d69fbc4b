package evidence

// Reason codes. The prefix names the link or rule: bundle, hcl, snp, tdx,
// binding, tpm, eventlog and verifier come from verification (is the
// evidence genuine and fresh); policy, identity and freshness from
// validation against a policy.
const (
	ReasonBundleMalformed = "bundle.malformed"

	ReasonHCLMalformed          = "hcl.malformed"
	ReasonHCLReportTypeMismatch = "hcl.report_type_mismatch"
	ReasonHCLRuntimeDataInvalid = "hcl.runtime_data_invalid"
	ReasonHCLAKMissing          = "hcl.ak_missing"

	ReasonSNPReportMalformed  = "snp.report_malformed"
	ReasonSNPSignatureInvalid = "snp.signature_invalid"
	ReasonSNPVCEKInvalid      = "snp.vcek_invalid"
	ReasonSNPVCEKMismatch     = "snp.vcek_mismatch"
	ReasonSNPVCEKUnavailable  = "snp.vcek_unavailable"
	ReasonSNPProductUnknown   = "snp.product_unknown"
	ReasonSNPCertRevoked      = "snp.cert_revoked"    // AMD's CRL revokes the ASK or the VCEK
	ReasonSNPCRLInvalid       = "snp.crl_invalid"     // AMD's CRL is not the ARK's, expired or malformed
	ReasonSNPCRLUnavailable   = "snp.crl_unavailable" // AMD's CRL could not be obtained (Unavailable)

	ReasonTDXQuoteMalformed        = "tdx.quote_malformed"
	ReasonTDXPCKChainInvalid       = "tdx.pck_chain_invalid"
	ReasonTDXQEReportInvalid       = "tdx.qe_report_invalid"
	ReasonTDXSignatureInvalid      = "tdx.signature_invalid"
	ReasonTDXTDReportMismatch      = "tdx.td_report_mismatch"
	ReasonTDXCollateralInvalid     = "tdx.collateral_invalid"
	ReasonTDXCollateralUnavailable = "tdx.collateral_unavailable"

	ReasonBindingMismatch = "binding.report_data_mismatch"

	ReasonTPMQuoteMalformed    = "tpm.quote_malformed"
	ReasonTPMSignatureInvalid  = "tpm.signature_invalid"
	ReasonTPMNonceMismatch     = "tpm.nonce_mismatch"
	ReasonTPMPCRSelection      = "tpm.pcr_selection_mismatch"
	ReasonTPMPCRDigestMismatch = "tpm.pcr_digest_mismatch"

	ReasonEventLogInvalid     = "eventlog.invalid"
	ReasonEventLogPCRMismatch = "eventlog.pcr_mismatch"

	ReasonVerifierError = "verifier.error"

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
