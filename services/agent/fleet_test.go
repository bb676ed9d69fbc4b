package agent_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/agent"
)

// authority is shared by the tests: building the vendor chains takes a
// moment.
var authority = sync.OnceValue(func() *sim.Authority {
	a, err := sim.NewAuthority(sim.AuthorityConfig{})
	if err != nil {
		panic(err)
	}
	return a
})

func connect(t testing.TB, url string) *bus.Conn {
	t.Helper()
	c, err := bus.Connect(context.Background(), bus.Config{URL: url, Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// challenge sends a fresh nonce to vm and verifies the answer.
func challenge(ctx context.Context, c *bus.Conn, v *evidence.Verifier, pol *appraise.Policy, vm, vmID string, timeout time.Duration) (events.Verdict, error) {
	nonce := evidence.NewNonce()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var raw []byte
	if err := c.Request(rctx, events.ChallengeSubject(vm), events.Challenge{VMKey: vm, Nonce: nonce, Deadline: time.Now().Add(timeout)}, &raw); err != nil {
		return events.Verdict{}, err
	}
	verdict, _, _ := appraise.Evidence(ctx, v, raw, evidence.Expect{Nonce: nonce, VMID: vmID, VMKey: vm}, pol, appraise.Options{})
	return verdict, nil
}

func hasReason(v events.Verdict, code string) bool {
	for _, r := range v.Reasons {
		if r.Code == code {
			return true
		}
	}
	return false
}

func TestFleetAnswersAndFaultsSwitchAtRuntime(t *testing.T) {
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx := ctxT(t, 60*time.Second)
	auth := authority()
	fleet, err := agent.NewFleet(agent.FleetConfig{Authority: auth, VMs: 6, TDXEvery: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Serve(ctx, c); err != nil {
		t.Fatal(err)
	}
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	pol := auth.Policy()
	platforms := map[string]int{}
	for _, vm := range fleet.VMs() {
		platforms[vm.Platform()]++
		verdict, err := challenge(ctx, c, v, pol, vm.VMKey(), vm.VMID(), 5*time.Second)
		if err != nil {
			t.Fatalf("%s: %v", vm.VMKey(), err)
		}
		if verdict.Status != events.VerdictAffirming {
			t.Fatalf("healthy %s VM: %s %v", vm.Platform(), verdict.Status, verdict.Reasons)
		}
	}
	if platforms[evidence.PlatformAzureSNP] != 4 || platforms[evidence.PlatformAzureTDX] != 2 {
		t.Fatalf("platforms %v, want 4 SNP and 2 TDX", platforms)
	}

	vm := fleet.VMs()[0]
	tests := []struct {
		name   string
		faults agent.Faults
		reason string
	}{
		{"tampered measurement", agent.Faults{TamperedMeasurement: true}, appraise.ReasonPolicyMeasurement},
		{"debug", agent.Faults{Debug: true}, appraise.ReasonPolicyDebug},
		{"wrong vmUniqueId", agent.Faults{WrongVMID: true}, appraise.ReasonIdentityVMIDMismatch},
		{"replayed evidence", agent.Faults{Replay: true}, evidence.ReasonTPMNonceMismatch},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := vm.SetFaults(tc.faults); err != nil {
				t.Fatal(err)
			}
			verdict, err := challenge(ctx, c, v, pol, vm.VMKey(), vm.VMID(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if verdict.Status != events.VerdictContraindicated || !hasReason(verdict, tc.reason) {
				t.Fatalf("verdict %s %v, want contraindicated with %s", verdict.Status, verdict.Reasons, tc.reason)
			}
		})
	}

	t.Run("silent", func(t *testing.T) {
		if err := fleet.SetFaults(vm.VMKey(), agent.Faults{Silent: true}); err != nil {
			t.Fatal(err)
		}
		_, err := challenge(ctx, c, v, pol, vm.VMKey(), vm.VMID(), 2*time.Second)
		if !errors.Is(err, bus.ErrNoResponders) {
			t.Fatalf("silent VM: %v, want no responders", err)
		}
	})
	t.Run("slow", func(t *testing.T) {
		if err := fleet.SetFaults(vm.VMKey(), agent.Faults{Delay: 3 * time.Second}); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		_, err := challenge(ctx, c, v, pol, vm.VMKey(), vm.VMID(), time.Second)
		if err == nil {
			t.Fatal("a slow VM answered within the deadline")
		}
		if d := time.Since(start); d > 2500*time.Millisecond {
			t.Fatalf("request took %s, its deadline was 1s", d)
		}
	})
	t.Run("healthy again", func(t *testing.T) {
		if err := vm.SetFaults(agent.Faults{}); err != nil {
			t.Fatal(err)
		}
		verdict, err := challenge(ctx, c, v, pol, vm.VMKey(), vm.VMID(), 5*time.Second)
		if err != nil || verdict.Status != events.VerdictAffirming {
			t.Fatalf("after clearing faults: %v %s %v", err, verdict.Status, verdict.Reasons)
		}
	})
}

func TestAgentRefusesBadChallenges(t *testing.T) {
	srv := natstest.Start(t)
	c := connect(t, srv.URL())
	ctx := ctxT(t, 30*time.Second)
	fleet, err := agent.NewFleet(agent.FleetConfig{Authority: authority(), VMs: 1, RatePerSecond: 1, Burst: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := fleet.Serve(ctx, c); err != nil {
		t.Fatal(err)
	}
	vm := fleet.VMs()[0].VMKey()
	other := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/other")
	nonce := evidence.NewNonce()
	tests := []struct {
		name string
		req  any
		code string
	}{
		{"not json", []byte("{"), "bad_request"},
		{"other VM", events.Challenge{VMKey: other, Nonce: nonce}, "wrong_vm"},
		{"short nonce", events.Challenge{VMKey: vm, Nonce: []byte{1, 2, 3}}, "bad_request"},
		{"long nonce", events.Challenge{VMKey: vm, Nonce: make([]byte, 65)}, "bad_request"},
		{"expired", events.Challenge{VMKey: vm, Nonce: nonce, Deadline: time.Now().Add(-time.Second)}, "expired"},
		{"first good one", events.Challenge{VMKey: vm, Nonce: nonce}, ""},
		{"rate limited", events.Challenge{VMKey: vm, Nonce: nonce}, "rate_limited"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			var raw []byte
			err := c.Request(rctx, events.ChallengeSubject(vm), tc.req, &raw)
			var re *bus.ReplyError
			switch {
			case tc.code == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.code == "" && len(raw) == 0:
				t.Fatal("empty answer")
			case tc.code != "" && (!errors.As(err, &re) || re.Code != tc.code):
				t.Fatalf("err = %v, want refusal %q", err, tc.code)
			}
		})
	}
}
