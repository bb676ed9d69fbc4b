// Package appraise decides what verified evidence means: it validates an
// evidence.Result against a Policy and turns both into an EAR-shaped
// events.Verdict (AR4SI trust vector, status, reason codes), optionally
// signed as an ES256 JWS.
//
// Package evidence answers "is this evidence genuine and fresh"; this
// package answers "is a VM with these claims acceptable", as go-sev-guest
// separates verify from validate. The dependency points one way: appraise
// imports evidence, never the reverse. So the reason codes of verification
// (bundle, hcl, snp, tdx, binding, tpm, eventlog, verifier) are
// evidence's, and those of validation (policy, identity, freshness) are
// this package's; a verdict carries both.
//
// Policy.Validate lists the findings of a genuine evidence.Result; Result
// makes the verdict of any evidence.Result (or of a bundle that could not
// be parsed); Evidence verifies raw evidence with an evidence.Verifier and
// appraises it in one call. Evidence that is not genuine is
// contraindicated by verification alone, and evidence whose collateral
// could not be obtained gets status none (decide later) rather than a
// failure.
package appraise
