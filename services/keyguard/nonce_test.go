package keyguard_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// askNonce asks for a nonce for vm over c.
func askNonce(t testing.TB, c *bus.Conn, vm string) (keyrelease.NonceResponse, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var nr keyrelease.NonceResponse
	err := c.Request(ctx, keyrelease.NonceSubject(vm), keyrelease.NonceRequest{VMKey: vm}, &nr)
	return nr, err
}

// storedNonces returns how many keys the nonce bucket holds for vm, or in
// all when vm is "" (expired, used and withdrawn nonces leave by TTL).
func (h *harness) storedNonces(vm string) int {
	h.t.Helper()
	ctx := ctxT(h.t)
	s, err := h.js.Stream(ctx, "KV_"+events.BucketKeyguardNonces)
	if err != nil {
		h.t.Fatal(err)
	}
	filter := "$KV." + events.BucketKeyguardNonces + ".>"
	if vm != "" {
		filter = "$KV." + events.BucketKeyguardNonces + "." + vm + ".*"
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		h.t.Fatal(err)
	}
	return len(info.State.Subjects)
}

// unknownVM returns the VM key of a VM nobody granted anything.
func unknownVM(i int) string {
	return events.VMKey(fmt.Sprintf("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/ghost-%d", i))
}

// Threat: whoever may ask for release nonces fills keyguard's nonce bucket
// by asking for VMs that do not exist (5,000 requests stored 1.5 MB in
// under half a second). Defence: nonces only for VMs holding a local grant.
func TestNonceFloodForUnknownVMsStoresNothing(t *testing.T) {
	h := newHarness(t)
	vm := h.newVM("flood-granted")
	h.setStatus(vm, events.StatusTrusted)
	h.grant(vm, "disk-key", keyguard.BackendLocal)

	const requests, workers = 5000, 16
	var refused atomic.Int64
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < requests; i += workers {
				_, err := askNonce(t, h.conn, unknownVM(i))
				if refusal(err) != keyrelease.CodeNoGrant {
					errs <- fmt.Errorf("nonce for unknown VM %d: %v, want %s", i, err, keyrelease.CodeNoGrant)
					return
				}
				refused.Add(1)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if refused.Load() != requests {
		t.Fatalf("%d of %d requests refused", refused.Load(), requests)
	}
	if n := h.storedNonces(""); n != 0 {
		t.Fatalf("the nonce bucket holds %d keys after a flood for unknown VMs, want 0", n)
	}
	// The flood harms nobody else: the granted VM gets its nonce.
	if _, err := askNonce(t, h.conn, vm.VMKey()); err != nil {
		t.Fatalf("nonce for a granted VM after the flood: %v", err)
	}
	if n := h.storedNonces(vm.VMKey()); n != 1 {
		t.Fatalf("%d nonces stored for the granted VM, want 1", n)
	}
}

// Nonces are issued for a VM with an active local grant only; a VM whose
// grants are all revoked or suspended hears the code its release would get,
// without key names, and nothing is stored.
func TestNonceOnlyForVMsWithActiveLocalGrant(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		name  string
		setup func(h *harness, vm *sim.VM)
		want  string // refusal code, "" for a nonce
	}{
		{"no grant", func(*harness, *sim.VM) {}, keyrelease.CodeNoGrant},
		{"active", func(h *harness, vm *sim.VM) {
			h.grant(vm, "disk-key", keyguard.BackendLocal)
		}, ""},
		{"active and revoked", func(h *harness, vm *sim.VM) {
			h.grant(vm, "disk-key", keyguard.BackendLocal)
			h.grant(vm, "other-key", keyguard.BackendLocal)
			if _, err := keyguard.Revoke(ctxT(h.t), h.conn, keyguard.ChangeRequest{VM: vm.VMKey(), Keys: []string{"other-key"}, Reason: "test", Actor: "test"}); err != nil {
				h.t.Fatal(err)
			}
			h.waitGrant(vm, keyguard.BackendLocal, "other-key", grants.Revoked)
		}, ""},
		{"revoked", func(h *harness, vm *sim.VM) {
			h.grant(vm, "disk-key", keyguard.BackendLocal)
			h.verdict(vm, events.VerdictContraindicated, events.Reason{Code: "policy.debug_enabled"})
			h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Revoked)
		}, keyrelease.CodeRevoked},
		{"suspended", func(h *harness, vm *sim.VM) {
			h.grant(vm, "disk-key", keyguard.BackendLocal)
			h.lifecycle(vm, events.LifecycleStopped)
			h.waitGrant(vm, keyguard.BackendLocal, "disk-key", grants.Suspended)
		}, keyrelease.CodeSuspended},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := h.with(t)
			vm := h.newVM(fmt.Sprintf("grant-state-%d", i))
			h.setStatus(vm, events.StatusTrusted)
			tc.setup(h, vm)
			_, err := askNonce(t, h.conn, vm.VMKey())
			if tc.want == "" {
				if err != nil {
					t.Fatalf("nonce: %v", err)
				}
				return
			}
			if refusal(err) != tc.want {
				t.Fatalf("nonce: %v, want %s", err, tc.want)
			}
			if strings.Contains(err.Error(), "disk-key") {
				t.Fatalf("refusal names the key: %v", err)
			}
			if n := h.storedNonces(vm.VMKey()); n != 0 {
				t.Fatalf("%d nonces stored after a refusal", n)
			}
		})
	}
}

// Threat: a VM (or anyone naming it) piles up unused nonces. Defence: at
// most Nonces.PerVM unused, unexpired nonces per VM, counted across
// replicas; a used one frees its place.
func TestNonceOutstandingBoundedPerVM(t *testing.T) {
	for _, perVM := range []int{1, 4} {
		t.Run(fmt.Sprintf("per-vm=%d", perVM), func(t *testing.T) {
			h := newHarness(t, func(c *keyguard.Config) {
				c.Nonces = keyguard.NonceLimits{PerVM: perVM, VMRate: 1000, VMBurst: 1000}
			})
			h.start() // a second replica: both count the same bucket
			vm := h.newVM("outstanding")
			h.setStatus(vm, events.StatusTrusted)
			h.grant(vm, "disk-key", keyguard.BackendLocal)

			// Many at once, over both replicas.
			const racers = 24
			var wg sync.WaitGroup
			var issued atomic.Int64
			errs := make(chan error, racers)
			for range racers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, err := askNonce(t, h.conn, vm.VMKey())
					switch {
					case err == nil:
						issued.Add(1)
					case refusal(err) != keyrelease.CodeRateLimited:
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("racing nonce request: %v, want a nonce or %s", err, keyrelease.CodeRateLimited)
			}
			if n := issued.Load(); n > int64(perVM) {
				t.Fatalf("%d racing requests got a nonce, want at most %d", n, perVM)
			}
			// One at a time, the VM gets exactly perVM in all.
			var held []keyrelease.NonceResponse
			deadline := time.Now().Add(20 * time.Second)
			for int(issued.Load())+len(held) < perVM {
				nr, err := askNonce(t, h.conn, vm.VMKey())
				switch {
				case err == nil:
					held = append(held, nr)
				case refusal(err) != keyrelease.CodeRateLimited || time.Now().After(deadline):
					t.Fatalf("nonce %d of %d: %v", int(issued.Load())+len(held)+1, perVM, err)
				}
			}
			_, err := askNonce(t, h.conn, vm.VMKey())
			if refusal(err) != keyrelease.CodeRateLimited || !strings.Contains(err.Error(), "unused nonces") {
				t.Fatalf("nonce beyond %d unused: %v, want %s", perVM, err, keyrelease.CodeRateLimited)
			}
			// The bucket holds the VM's perVM nonces, once the markers of
			// withdrawn ones have expired.
			for n := h.storedNonces(vm.VMKey()); n != perVM; n = h.storedNonces(vm.VMKey()) {
				if n < perVM || time.Now().After(deadline) {
					t.Fatalf("%d keys stored for the VM, want %d", n, perVM)
				}
				time.Sleep(50 * time.Millisecond)
			}
			// Another VM is not affected.
			other := h.newVM("outstanding-other")
			h.grant(other, "disk-key", keyguard.BackendLocal)
			if _, err := askNonce(t, h.conn, other.VMKey()); err != nil {
				t.Fatalf("nonce for another VM: %v", err)
			}
			if len(held) == 0 {
				return // the racers hold them all; their nonces are not known here
			}
			// Using a nonce frees its place (once its marker is gone).
			useNonce(t, h, vm, held[0].Nonce)
			deadline = time.Now().Add(20 * time.Second)
			for {
				_, err := askNonce(t, h.conn, vm.VMKey())
				if err == nil {
					break
				}
				if refusal(err) != keyrelease.CodeRateLimited || time.Now().After(deadline) {
					t.Fatalf("nonce after using one: %v", err)
				}
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
}

// useNonce asks for disk-key for vm with nonce. The nonce is used up
// whether the release then succeeds or is refused for another reason.
func useNonce(t *testing.T, h *harness, vm *sim.VM, nonce []byte) {
	t.Helper()
	ctx := ctxT(t)
	_, pub, err := keyrelease.DefaultSuite.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := attester(vm).Attest(ctx, nonce, keyrelease.Binding(nonce, keyrelease.DefaultSuite, pub))
	if err != nil {
		t.Fatal(err)
	}
	req := keyrelease.ReleaseRequest{VMKey: vm.VMKey(), KeyName: "disk-key", Nonce: nonce, Suite: keyrelease.DefaultSuite, PublicKey: pub, Evidence: bundle}
	err = h.conn.Request(ctx, keyrelease.ReleaseSubject(vm.VMKey()), req, nil)
	switch refusal(err) {
	case keyrelease.CodeBadNonce, keyrelease.CodeBadRequest, keyrelease.CodeUnavailable:
		t.Fatalf("release with a held nonce: %v", err)
	}
}

// Expired nonces stop counting when they expire, not when the bucket's
// five-minute TTL would remove them.
func TestExpiredNoncesFreeTheirPlace(t *testing.T) {
	h := newHarness(t, func(c *keyguard.Config) {
		c.NonceTTL = time.Second
		c.Nonces = keyguard.NonceLimits{PerVM: 2, VMRate: 1000, VMBurst: 1000}
	})
	vm := h.newVM("expiring")
	h.grant(vm, "disk-key", keyguard.BackendLocal)
	for i := range 2 {
		if _, err := askNonce(t, h.conn, vm.VMKey()); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	if _, err := askNonce(t, h.conn, vm.VMKey()); refusal(err) != keyrelease.CodeRateLimited {
		t.Fatalf("third nonce: %v, want %s", err, keyrelease.CodeRateLimited)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := askNonce(t, h.conn, vm.VMKey())
		if err == nil {
			return
		}
		if refusal(err) != keyrelease.CodeRateLimited || time.Now().After(deadline) {
			t.Fatalf("nonce after the others expired: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// agentAccounts puts keyguard (the default user) and the agents in separate
// accounts; the agents reach the release API through a service import that
// shares their identity, so the server names them in Nats-Request-Info.
const agentAccounts = `
accounts {
  VIGIL {
    jetstream: enabled
    users: [{user: keyguard, password: keyguard}]
    exports: [{service: "vigil.keyguard.nonce.*"}, {service: "vigil.keyguard.release.*"}]
  }
  AGENTS {
    users: [{user: agent-a, password: a}, {user: agent-b, password: b}]
    imports: [
      {service: {account: VIGIL, subject: "vigil.keyguard.nonce.*"}, share: true}
      {service: {account: VIGIL, subject: "vigil.keyguard.release.*"}, share: true}
    ]
  }
}
no_auth_user: keyguard
`

// Threat: one requester floods the nonce API (for granted VMs or not),
// costing a grant lookup each time and starving the VMs it names.
// Defence: a rate per requester (the user the NATS server names) checked
// before anything else, and a rate per VM; another VM, or another
// requester, still gets its nonce.
func TestNonceRequesterFloodRateLimited(t *testing.T) {
	const burst = 5
	limits := func(c *keyguard.Config) {
		c.Nonces = keyguard.NonceLimits{PerVM: 100, VMRate: 0.001, VMBurst: burst, RequesterRate: 0.001, RequesterBurst: burst}
	}
	cases := []struct {
		name string
		// server runs NATS; flooder and other connect as two requesters.
		server          func(t *testing.T) *natstest.Server
		flooder, other  func(h *harness) *bus.Conn
		requesterKnown  bool
		floodUnknownVMs bool
	}{
		{
			name:           "service import names the requester",
			server:         func(t *testing.T) *natstest.Server { return natstest.StartConfigured(t, agentAccounts) },
			flooder:        func(h *harness) *bus.Conn { return h.connectAs("agent-a", "a") },
			other:          func(h *harness) *bus.Conn { return h.connectAs("agent-b", "b") },
			requesterKnown: true,
		},
		{
			name:    "one account: per VM only",
			server:  func(t *testing.T) *natstest.Server { return natstest.Start(t) },
			flooder: func(h *harness) *bus.Conn { return h.connect() },
			other:   func(h *harness) *bus.Conn { return h.connect() },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarnessOn(t, tc.server(t), limits)
			target, bystander := h.newVM("flood-target"), h.newVM("flood-bystander")
			h.grant(target, "disk-key", keyguard.BackendLocal)
			h.grant(bystander, "disk-key", keyguard.BackendLocal)
			flooder, other := tc.flooder(h), tc.other(h)

			// The flood: the target VM and VMs that do not exist, in turn.
			const flood = 100
			passed, issued := 0, 0 // requests past the requester's rate; nonces
			for i := range flood {
				vm := target.VMKey()
				if i%2 == 1 {
					vm = unknownVM(i)
				}
				_, err := askNonce(t, flooder, vm)
				switch {
				case err == nil && vm != target.VMKey():
					t.Fatalf("flood request %d: a nonce for a VM that does not exist", i)
				case err == nil:
					issued++
					passed++
				case refusal(err) == keyrelease.CodeNoGrant:
					passed++
				case refusal(err) != keyrelease.CodeRateLimited:
					t.Fatalf("flood request %d: %v", i, err)
				}
			}
			if issued > burst {
				t.Fatalf("flood: %d nonces issued for one VM, want at most its burst of %d", issued, burst)
			}
			if tc.requesterKnown && passed > burst {
				t.Fatalf("flood: %d requests got past the requester's burst of %d", passed, burst)
			}
			// The flood does not stop another VM's nonce.
			if _, err := askNonce(t, other, bystander.VMKey()); err != nil {
				t.Fatalf("nonce for another VM during the flood: %v", err)
			}
			if !tc.requesterKnown {
				return
			}
			// The flooder is limited whatever VM it names, and cannot shed
			// its name: the server replaces a Nats-Request-Info it sends.
			if _, err := askNonce(t, flooder, bystander.VMKey()); refusal(err) != keyrelease.CodeRateLimited {
				t.Fatalf("flooder asking for another VM: %v, want %s", err, keyrelease.CodeRateLimited)
			}
			forged := nats.NewMsg(keyrelease.NonceSubject(bystander.VMKey()))
			forged.Header.Set("Nats-Request-Info", `{"acc":"AGENTS","user":"agent-c"}`)
			forged.Data, _ = json.Marshal(keyrelease.NonceRequest{VMKey: bystander.VMKey()})
			ctx, cancel := context.WithTimeout(ctxT(t), 10*time.Second)
			defer cancel()
			reply, err := flooder.NC.RequestMsgWithContext(ctx, forged)
			if err != nil {
				t.Fatal(err)
			}
			if code := reply.Header.Get(bus.HeaderErrorCode); code != keyrelease.CodeRateLimited {
				t.Fatalf("flooder with a forged Nats-Request-Info: code %q, want %s", code, keyrelease.CodeRateLimited)
			}
			// Another requester still gets the target's nonce: the VM's
			// own rate is not used up by the flooder.
			if _, err := askNonce(t, other, target.VMKey()); err != nil {
				t.Fatalf("other requester, target VM: %v", err)
			}
		})
	}
}

// connectAs connects to h's server as user.
func (h *harness) connectAs(user, password string) *bus.Conn {
	h.t.Helper()
	url := strings.Replace(h.srv.URL(), "nats://", "nats://"+user+":"+password+"@", 1)
	c, err := bus.Connect(context.Background(), bus.Config{URL: url, Name: user, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() { _ = c.Close() })
	return c
}

// The nonce bucket has a byte limit and a value limit, so nothing can make
// it grow without bound.
func TestNonceBucketBounded(t *testing.T) {
	h := newHarness(t)
	s, err := h.js.Stream(ctxT(t), "KV_"+events.BucketKeyguardNonces)
	if err != nil {
		t.Fatal(err)
	}
	cfg := s.CachedInfo().Config
	if cfg.MaxBytes <= 0 || cfg.MaxBytes > 64<<20 {
		t.Fatalf("nonce bucket MaxBytes %d, want 1 to %d", cfg.MaxBytes, 64<<20)
	}
	if cfg.MaxMsgSize <= 0 || cfg.MaxMsgSize > 1<<10 {
		t.Fatalf("nonce bucket MaxMsgSize %d, want 1 to %d", cfg.MaxMsgSize, 1<<10)
	}
	if cfg.Discard != jetstream.DiscardNew {
		t.Fatalf("nonce bucket discards %s when full, want new (an issued nonce is never dropped)", cfg.Discard)
	}
}
