// Package evidence verifies Azure Confidential VM evidence (vigil.evidence/v1
// bundles: SEV-SNP or TDX via the paravisor's HCL report, plus a vTPM quote)
// and appraises it against a policy into EAR-shaped verdicts.
//
// Verification (Verifier.Verify) answers "is this evidence genuine and
// fresh": the hardware report chains to pinned AMD or Intel roots, the
// report data binds the runtime data, the TPM quote verifies with the
// runtime data's HCLAkPub, its extraData is the issued nonce and its PCR
// digest matches the PCR values. Validation (Policy.Validate) then asks
// whether the verified claims satisfy a policy; Appraise combines both into
// an events.Verdict with machine-readable reason codes.
//
// Revocation is checked when configured: Config.TDXCollateral checks Intel's
// PCK CRL (with TCB info and QE identity), Config.SNPRevocation AMD's CRL of
// the VCEK's product line, signed by the pinned ARK, for the ASK and the
// VCEK. Both come through the collateral cache, kept until their
// nextUpdate; when they cannot be obtained the result is Unavailable rather
// than a failure.
package evidence
