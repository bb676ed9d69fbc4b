package keyguard_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// Threat: one VM's agent asks for nonces for another VM until that VM
// holds its bound of unused nonces and has used up its rate, so that its
// key releases are refused. Defence: in operator mode an agent may publish
// only on its own VM's vigil.keyguard.{nonce,release}.<vm> (the unpinned
// subjects of earlier releases are gone), and keyguard refuses there a
// request for another VM. The server refuses VM A's agent every request
// on VM B's subject, none reaches keyguard, and B's agent still obtains
// its full bound of nonces.
func TestAgentCannotStarveAnotherVMsNonces(t *testing.T) {
	h := newOperatorHarness(t)
	vmA, vmB := h.newVM("starve-attacker"), h.newVM("starve-victim")
	for _, vm := range []*sim.VM{vmA, vmB} {
		if _, err := keyguard.Grant(ctxT(t), h.conn, keyguard.GrantRequest{VM: vm.ResourceID(), Key: "disk-key",
			Backend: keyguard.BackendLocal, Actor: busauth.DefaultAdminName}); err != nil {
			t.Fatalf("grant: %v", err)
		}
	}
	agentA, agentB := h.connectAgent(vmA), h.connectAgent(vmB)

	// A's agent on B's subjects and on the unpinned ones: refused by the
	// server, more often than B's bound of nonces.
	body, _ := json.Marshal(keyrelease.NonceRequest{VMKey: vmB.VMKey()})
	for _, subject := range []string{keyrelease.NonceSubject(vmB.VMKey()), keyrelease.ReleaseSubject(vmB.VMKey()),
		"vigil.keyguard.nonce", "vigil.keyguard.release"} {
		for i := range 3 * 8 {
			before := agentA.NC.LastError()
			if err := agentA.NC.PublishRequest(subject, agentA.NC.NewRespInbox(), body); err != nil {
				t.Fatal(err)
			}
			if err := agentA.NC.FlushTimeout(10 * time.Second); err != nil {
				t.Fatal(err)
			}
			last := agentA.NC.LastError()
			if last == nil || last == before || !errors.Is(last, nats.ErrPermissionViolation) || !strings.Contains(last.Error(), strconv.Quote(subject)) {
				t.Fatalf("A's agent request %d on %s: not refused by the server (last error %v)", i, subject, last)
			}
		}
	}
	if n := h.storedNonces(vmB.VMKey()); n != 0 {
		t.Fatalf("B holds %d nonces after A's attempts, want 0", n)
	}
	// On its own subject, A's agent gets nothing for B from keyguard.
	if _, err := askNonceOn(t, agentA, vmA.VMKey(), vmB.VMKey()); refusal(err) != keyrelease.CodeWrongVM {
		t.Fatalf("A's agent asking for B's nonce on its own subject: %v, want %s", err, keyrelease.CodeWrongVM)
	}
	// B's agent obtains its whole bound of nonces (the default, 8), and A's
	// agent its own.
	for i := range 8 {
		if _, err := askNonce(t, agentB, vmB.VMKey()); err != nil {
			t.Fatalf("B's nonce %d: %v", i, err)
		}
	}
	if _, err := askNonce(t, agentA, vmA.VMKey()); err != nil {
		t.Fatalf("A's own nonce: %v", err)
	}
}

// askNonceOn asks over c, on the subject of VM on, for a nonce for vm.
func askNonceOn(t testing.TB, c *bus.Conn, on, vm string) (keyrelease.NonceResponse, error) {
	t.Helper()
	var nr keyrelease.NonceResponse
	err := c.Request(ctxT(t), keyrelease.NonceSubject(on), keyrelease.NonceRequest{VMKey: vm}, &nr)
	return nr, err
}

// connectAgent connects to h's operator-mode server as vm's agent.
func (h *harness) connectAgent(vm *sim.VM) *bus.Conn {
	h.t.Helper()
	c, err := h.auth.AgentCreds(vm.VMKey(), 0)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.connectCreds(c)
}
