package evidence

// Reason codes of verification: the prefix names the broken link (bundle,
// hcl, snp, tdx, binding, tpm, eventlog) or verifier for an internal error.
// The codes of validation against a policy (policy, identity, freshness)
// are package appraise's (evidence/appraise), whose verdicts carry both.
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
)
