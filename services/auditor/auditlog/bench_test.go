package auditlog

import (
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
)

func BenchmarkEncodeMessage(b *testing.B) {
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
	env, _ := events.New(events.TypeVerdict, "bench", vm, events.Verdict{
		ID: "v-1", VMKey: vm, Platform: "azure-sev-snp", Status: events.VerdictAffirming,
		EvidenceDigest: "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		PolicyID:       "default", PolicyVersion: 3, VerifierBuild: "bench", IssuedAt: time.Now().UTC(),
		TCB: &events.TCB{BootLoader: 3, SNP: 8, Microcode: 115, Product: "Genoa"},
	})
	body, _ := env.Marshal()
	m := Message{Stream: events.StreamEvents, Seq: 1, Subject: events.VerdictSubject(vm), Stored: time.Now(), Body: body}
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		EncodeMessage(m)
	}
}
