// Package evidence verifies Azure Confidential VM evidence (vigil.evidence/v1
// bundles: SEV-SNP or TDX via the paravisor's HCL report, plus a vTPM quote).
//
// Verification (Verifier.Verify) answers "is this evidence genuine and
// fresh": the hardware report chains to pinned AMD or Intel roots, the
// report data binds the runtime data, the TPM quote verifies with the
// runtime data's HCLAkPub, its extraData is the issued nonce and its PCR
// digest matches the PCR values. The Result lists the broken links with
// reason codes and the claims the evidence makes. Whether those claims are
// acceptable is a policy's question, answered by package appraise
// (evidence/appraise), which imports this package; this one knows
// nothing of policies or verdicts.
//
// Revocation is checked when configured: Config.TDXCollateral checks Intel's
// PCK CRL (with TCB info and QE identity), Config.SNPRevocation AMD's CRL of
// the VCEK's product line, signed by the pinned ARK, for the ASK and the
// VCEK. Both come through the collateral cache, kept until their
// nextUpdate; when they cannot be obtained the result is Unavailable rather
// than a failure.
//
// Collateral fetched from AMD KDS and Intel PCS (VCEKs, AMD CRLs, TCB info,
// QE identity, PCK CRLs) is verified before it is stored in the collateral
// cache, which in production every worker shares: an answer that does not
// chain to the pinned roots (or is not what was asked for) fails the
// evidence and is never stored. Reads from the cache are verified again; a
// cached copy that does not verify is fetched again and replaced. That
// checking is verification and stays here; package collateral holds the
// cache and the Fetcher, which only transports (bounded GETs, concurrent
// fetches collapsed, backoff). After a failed fetch the same collateral is
// not fetched again for a backoff window (5 s, doubling to 5 min,
// forgotten on success; a 429 or 503 answer's Retry-After, up to an hour,
// holds back its whole host): verifications needing it meanwhile are
// Unavailable at once, with a *collateral.BackoffError saying until when
// and why.
package evidence
