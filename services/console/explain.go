package console

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
)

// reasonWords explains the reason codes of docs/design.md §13 (and the
// configuration findings' prefixes) to a person; a code not listed is
// explained by the message that came with it.
var reasonWords = map[string]string{
	"bundle.malformed":                 "the evidence bundle could not be read",
	"hcl.malformed":                    "the Azure HCL report could not be read",
	"hcl.report_type_mismatch":         "the HCL report is for another platform than the evidence",
	"hcl.runtime_data_invalid":         "the HCL report's runtime data is not valid",
	"hcl.ak_missing":                   "the HCL report carries no attestation key",
	"snp.report_malformed":             "the SEV-SNP report could not be read",
	"snp.signature_invalid":            "the SEV-SNP report's signature does not verify: it was not made by genuine AMD hardware",
	"snp.vcek_invalid":                 "the VCEK certificate does not chain to AMD's root",
	"snp.vcek_mismatch":                "the VCEK certificate is not the one of this chip and TCB",
	"snp.vcek_unavailable":             "the VCEK certificate could not be fetched now (no decision)",
	"snp.product_unknown":              "the AMD product is unknown",
	"snp.cert_revoked":                 "an AMD certificate in the chain is revoked",
	"snp.crl_invalid":                  "AMD's revocation list is not valid",
	"snp.crl_unavailable":              "AMD's revocation list could not be fetched now (no decision)",
	"tdx.quote_malformed":              "the TDX quote could not be read",
	"tdx.pck_chain_invalid":            "the PCK certificate chain does not lead to Intel's root",
	"tdx.qe_report_invalid":            "the quoting enclave's report is not valid",
	"tdx.signature_invalid":            "the TDX quote's signature does not verify",
	"tdx.td_report_mismatch":           "the TDX quote does not match the TD report",
	"tdx.collateral_invalid":           "Intel's collateral is not valid",
	"tdx.collateral_unavailable":       "Intel's collateral could not be fetched now (no decision)",
	"binding.report_data_mismatch":     "the hardware report does not bind the vTPM's key: the evidence was assembled from parts",
	"tpm.quote_malformed":              "the vTPM quote could not be read",
	"tpm.signature_invalid":            "the vTPM quote's signature does not verify",
	"tpm.nonce_mismatch":               "the vTPM quote does not answer this challenge (replayed evidence)",
	"tpm.pcr_selection_mismatch":       "the vTPM quote covers other PCRs than asked",
	"tpm.pcr_digest_mismatch":          "the PCR values do not match the quote",
	"eventlog.invalid":                 "the boot event log could not be read",
	"eventlog.pcr_mismatch":            "the boot event log does not replay to the quoted PCRs",
	"verifier.error":                   "the verifier failed on this evidence",
	"verifier.no_appraisal":            "the verifier gave no appraisal",
	"policy.platform_not_allowed":      "the policy does not allow this platform",
	"policy.product_not_allowed":       "the policy does not allow this processor product",
	"policy.debug_enabled":             "debugging is enabled in the guest's policy: the host could read its memory",
	"policy.migration_agent_enabled":   "a migration agent is enabled",
	"policy.smt_enabled":               "simultaneous multithreading is enabled against the policy",
	"policy.vmpl_mismatch":             "the report comes from an unexpected VM privilege level",
	"policy.tcb_too_low":               "the platform's firmware (TCB) is older than the policy requires",
	"policy.tcb_status":                "Intel rates the platform's TCB as not up to date",
	"policy.tcb_status_unknown":        "the platform's TCB status is unknown",
	"policy.measurement_not_allowed":   "the launch measurement is not one the policy allows: the firmware or boot image was changed",
	"policy.mrseam_not_allowed":        "the TDX module's measurement is not allowed",
	"policy.td_attributes_not_allowed": "the TD's attributes are not allowed",
	"policy.pcr_mismatch":              "a measured boot value (PCR) differs from the policy's",
	"policy.secure_boot_disabled":      "Secure Boot is off",
	"policy.tpm_disabled":              "the vTPM is off",
	"policy.console_enabled":           "the serial console is enabled",
	"policy.event_log_required":        "the policy requires a boot event log and none came",
	"policy.evidence_too_old":          "the evidence is older than the policy accepts",
	"policy.evidence_from_future":      "the evidence is dated in the future",
	"identity.vmid_mismatch":           "the evidence comes from another VM than the one asked",
	"identity.vmid_missing":            "the evidence does not say which VM it comes from",
	"identity.vmid_unknown":            "the VM's identity is not known to check the evidence against",
	"identity.vm_key_mismatch":         "the evidence names another VM key",
	"freshness.nonce_not_checked":      "the evidence's freshness was not checked",
	"agent.unreachable":                "nobody answered the VM's challenge",
	"agent.timeout":                    "the agent did not answer in time",
	"agent.refused":                    "the agent refused the challenge",
	"evidence.stale":                   "no valid evidence arrived within the grace period",
	"vm.stopped":                       "the VM was stopped",
	"vm.deallocated":                   "the VM was deallocated",
	"vm.deleted":                       "the VM was deleted",
	"vm.created":                       "the VM was created",
	"vm.started":                       "the VM was started",
	"vm.restarted":                     "the VM was restarted",
	"vm.available":                     "the VM is available again",
	"vm.running":                       "a running VM was found by the sweep",
}

// explain puts a reason into words.
func explain(r events.Reason) Explained {
	if w, ok := reasonWords[r.Code]; ok {
		return Explained{Code: r.Code, Words: w}
	}
	if r.Message != "" {
		return Explained{Code: r.Code, Words: r.Message}
	}
	return Explained{Code: r.Code, Words: strings.ReplaceAll(r.Code, "_", " ")}
}

func explainAll(rs []events.Reason) []Explained {
	out := make([]Explained, 0, len(rs))
	for _, r := range rs {
		out = append(out, explain(r))
	}
	return out
}

// describeEvent turns an event of VIGIL_EVENTS into a timeline entry's
// kind, title and reasons; a verdict is returned too. An event the console
// does not show has kind "".
func describeEvent(env events.Envelope) (kind, title string, reasons []Explained, verdict *events.Verdict) {
	switch env.Type {
	case events.TypeLifecycle:
		var l events.Lifecycle
		if env.Decode(env.Type, &l) != nil {
			return "", "", nil, nil
		}
		title = "lifecycle: " + string(l.Kind)
		if l.Origin != "" {
			title += " (from " + l.Origin + ")"
		}
		if l.Superseded {
			title += ", superseded by a newer event"
		}
		return events.KindLifecycle, title, nil, nil
	case events.TypeConfig:
		var c events.Config
		if env.Decode(env.Type, &c) != nil {
			return "", "", nil, nil
		}
		for _, f := range c.Findings {
			reasons = append(reasons, Explained{Code: f.Code, Words: string(f.Severity) + ": " + f.Message})
		}
		if c.Compliant {
			return events.KindConfig, fmt.Sprintf("configuration compliant (%d informational finding(s))", len(c.Findings)), reasons, nil
		}
		return events.KindConfig, fmt.Sprintf("configuration: %d finding(s)", len(c.Findings)), reasons, nil
	case events.TypeVerdict:
		var v events.Verdict
		if env.Decode(env.Type, &v) != nil {
			return "", "", nil, nil
		}
		title = "verdict: " + v.Status
		if v.PolicyID != "" {
			title += " (policy " + v.PolicyID + " v" + strconv.Itoa(v.PolicyVersion) + ")"
		}
		v.JWS = "" // not shown, and the index keeps one verdict per VM
		return events.KindVerdict, title, explainAll(v.Reasons), &v
	case events.TypeState:
		var s events.State
		if env.Decode(env.Type, &s) != nil {
			return "", "", nil, nil
		}
		from := s.From
		if from == "" {
			from = events.StatusPending
		}
		return events.KindState, "status: " + string(from) + " → " + string(s.To), explainAll(s.Reasons), nil
	case events.TypeKey:
		var k events.Key
		if env.Decode(env.Type, &k) != nil {
			return "", "", nil, nil
		}
		title = "key " + string(k.Action)
		if k.KeyName != "" {
			title += ": " + k.KeyName
		}
		if k.Backend != "" {
			title += " on " + k.Backend
		}
		if k.Reason != "" {
			title += " (" + k.Reason + ")"
		}
		if k.LatencyMS > 0 {
			title += fmt.Sprintf(" in %.1f ms", k.LatencyMS)
		}
		return events.KindKey, title, nil, nil
	}
	return "", "", nil, nil
}

func itoa(n int) string { return strconv.Itoa(n) }
