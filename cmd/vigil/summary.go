package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devview"
	"github.com/vigil-cc/vigil/cmd/vigil/internal/fleet"
)

// summarizeRun builds the summary of a simulated run from what the
// collector saw and what the fleet's scenario did.
func summarizeRun(col *devview.Collector, fl *fleet.Fleet, started time.Time) devview.Summary {
	tampered := map[string]string{}
	deleted := map[string]bool{}
	var keys, drifted []string
	for _, v := range fl.VMs() {
		keys = append(keys, v.Key)
		if v.Fault != "" {
			tampered[v.Key] = v.Fault
		}
		if v.Deleted {
			deleted[v.Key] = true
		}
		if v.Drifted {
			drifted = append(drifted, v.Key)
		}
	}
	s := col.Summarize(keys, tampered, deleted, started)
	s.Drifted = append(s.Drifted, drifted...)
	return s
}

// writeSummary writes s as indented JSON to path (when set) and prints its
// headline to out.
func writeSummary(out io.Writer, path string, s devview.Summary) error {
	if path != "" {
		b, err := json.MarshalIndent(s, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	}
	fmt.Fprintf(out, "\n%d VMs: %d attested, %d revoked (%d tampered, %d deleted), revocation latency p50 %.1f ms p99 %.1f ms, %d alerts, %d audit entries\n",
		s.VMs, s.Attested, len(s.Revoked), len(s.Tampered), len(s.Deleted), s.RevocationLatencyMS.P50, s.RevocationLatencyMS.P99, s.Alerts, s.Audit.Entries)
	return nil
}

// scenarioNotes makes the fleet's scenario visible in the live view.
func scenarioNotes(col **devview.Collector) (onFault, onLifecycle, onConfig func(vm, name, what string)) {
	onFault = func(vm, name, fault string) {
		(*col).Note(vm, fmt.Sprintf("%s  scenario: the VM goes bad (%s)", name, fault))
	}
	onLifecycle = func(vm, name, op string) {
		(*col).Note(vm, fmt.Sprintf("%s  scenario: Azure reports %s", name, op))
	}
	onConfig = func(vm, name, change string) {
		(*col).Note(vm, fmt.Sprintf("%s  scenario: an operator changes the VM in Azure: %s", name, change))
	}
	return onFault, onLifecycle, onConfig
}
