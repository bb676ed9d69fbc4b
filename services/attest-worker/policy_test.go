package attestworker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// TestPolicyVersionTakesEffectWithoutRestart publishes a new policy
// version as the CLI does and checks that the workers apply it at the next
// attestation, and that an invalid or older version changes nothing.
func TestPolicyVersionTakesEffectWithoutRestart(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 1, sim.VMConfig{Faults: sim.Faults{DebugPolicy: true}})
	v := f.vms[0]
	runWorker(t, testConfig(connectBus(t, srv.URL()), "w1"))
	f.register(ctx, v)
	waitFor(t, 20*time.Second, "untrusted for debug", func() (bool, string) {
		st, _ := statusOf(t, ctx, conn.JS, v.VMKey())
		return st.Status == events.StatusUntrusted && hasReason(st, appraise.ReasonPolicyDebug), string(st.Status)
	})

	publish := func(version int, doc string) {
		t.Helper()
		if _, err := conn.PublishEvent(ctx, events.PolicySubject("vigil-sim", "test"), events.TypePolicy, "test",
			events.Policy{Name: "vigil-sim", Version: version, Document: doc, Actor: "test", Reason: "allow debug", At: time.Now().UTC()}); err != nil {
			t.Fatal(err)
		}
	}
	// An invalid document is refused.
	publish(5, "id: vigil-sim\nversion: 5\nsnp: {allow_debug: maybe}\n")
	p := testAuthority().Policy()
	p.Version = 2
	p.SNP.AllowDebug = true
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	publish(2, string(doc))
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, v)
	vs := verdictsOf(t, ctx, conn.JS, v.VMKey())
	if last := vs[len(vs)-1]; last.PolicyVersion != 2 || last.Status != events.VerdictAffirming {
		t.Fatalf("last verdict under policy version %d: %s", last.PolicyVersion, last.Status)
	}
	// The alert follows the status write.
	waitFor(t, 20*time.Second, "a vm.recovered alert", func() (bool, string) {
		return slices.ContainsFunc(alertsWith(t, ctx, conn.JS, "vm.recovered"), func(a events.Alert) bool { return a.VMKey == v.VMKey() }), "none yet"
	})

	// An older version is not applied again.
	old := testAuthority().Policy()
	old.Version = 1
	doc, _ = old.Marshal()
	publish(1, string(doc))
	n := len(vs)
	waitFor(t, 15*time.Second, "two more attestations", func() (bool, string) { return len(verdictsOf(t, ctx, conn.JS, v.VMKey())) >= n+2, "" })
	if st, _ := statusOf(t, ctx, conn.JS, v.VMKey()); st.Status != events.StatusTrusted {
		t.Fatalf("after an older version: %s", st.Status)
	}
}

// TestFirstAppraisalUnderPolicyVersionStoredBeforeStart: a policy version
// published before the worker starts is in force for its very first
// appraisal: the worker consumes jobs only once it has read the stored
// versions. The policy follower is held back for a while with a job
// waiting; a worker that consumed before would appraise it under the
// configured version (debug refused) in that time.
func TestFirstAppraisalUnderPolicyVersionStoredBeforeStart(t *testing.T) {
	t.Parallel()
	srv, conn, ctx := testEnv(t)
	f := newFleet(t, ctx, conn, 1, sim.VMConfig{Faults: sim.Faults{DebugPolicy: true}})
	v := f.vms[0]
	p := testAuthority().Policy()
	p.Version = 2
	p.SNP.AllowDebug = true
	doc, err := p.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.PublishEvent(ctx, events.PolicySubject("vigil-sim", "test"), events.TypePolicy, "test",
		events.Policy{Name: "vigil-sim", Version: 2, Document: string(doc), Actor: "test", Reason: "allow debug", At: time.Now().UTC()}); err != nil {
		t.Fatal(err)
	}
	f.register(ctx, v) // the job waits
	appraised := make(chan struct{}, 1)
	h := hooks{
		point: func(pt, _ string) {
			if pt == "appraised" {
				select {
				case appraised <- struct{}{}:
				default:
				}
			}
		},
		follow: func(ctx context.Context, follow func(context.Context) error) error {
			// An observation window: long enough for a worker that does
			// not wait to have appraised the waiting job (tens of ms).
			select {
			case <-appraised:
			case <-time.After(2 * time.Second):
			case <-ctx.Done():
				return nil
			}
			return follow(ctx)
		},
	}
	runWorkerWith(t, testConfig(connectBus(t, srv.URL()), "w1"), h)
	waitStatus(t, ctx, conn.JS, 20*time.Second, events.StatusTrusted, v)
	if vs := verdictsOf(t, ctx, conn.JS, v.VMKey()); vs[0].PolicyVersion != 2 || vs[0].Status != events.VerdictAffirming {
		t.Fatalf("first verdict under policy version %d: %s", vs[0].PolicyVersion, vs[0].Status)
	}
}
