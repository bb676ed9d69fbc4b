package busauth_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// agentKey is the nkey an agent makes inside its VM: the issuer sees only
// its public key.
type agentKey struct {
	pub, seed string
}

func newAgentKey(t *testing.T) agentKey {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	return agentKey{pub: pub, seed: string(seed)}
}

// issueAgent issues an agent of vm with iss for a new key and returns its
// credentials.
func issueAgent(t *testing.T, iss *busauth.AgentIssuer, vm string) busauth.Credentials {
	t.Helper()
	k := newAgentKey(t)
	token, _, err := iss.Issue(vm, k.pub, 0)
	if err != nil {
		t.Fatal(err)
	}
	return busauth.Credentials{Principal: busauth.Agent, Name: vm, JWT: token, Seed: k.seed, InboxPrefix: busauth.AgentInboxPrefix(vm)}
}

// vmKey is the VM key of the i-th test VM.
func vmKey(i int) string {
	return events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm" + string(rune('a'+i)))
}

// TestAgentIssuer: an issuer of agents, from the set or from the
// directory (the agents' signing key and the account JWT only), issues
// agents with the claims of Set.IssueUser, which connect with the agent's
// permissions: their own challenge, not another VM's.
func TestAgentIssuer(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	// Only what the issuer needs.
	small := t.TempDir()
	for _, f := range []string{busauth.FileVigilAccount, busauth.SigningKeyFile(busauth.Agent)} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(small, f)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(small, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	loaded, err := busauth.LoadAgentIssuer(small)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, set: set, srv: natstest.StartOperator(t, set)}
	for _, tc := range []struct {
		name string
		iss  *busauth.AgentIssuer
	}{{"set", set.AgentIssuer()}, {"dir", loaded}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.iss.Account() != set.Account() {
				t.Fatalf("account %s, want %s", tc.iss.Account(), set.Account())
			}
			k := newAgentKey(t)
			token, expires, err := tc.iss.Issue(vmA, k.pub, 0)
			if err != nil {
				t.Fatal(err)
			}
			if d := time.Until(expires); d < busauth.DefaultAgentTTL-time.Minute || d > busauth.DefaultAgentTTL {
				t.Errorf("expires in %s", d)
			}
			// The same claims as the set's own issuance.
			want, err := set.IssueUser(busauth.Agent, vmA, k.pub, 0)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := jwt.DecodeUserClaims(token)
			ref, _ := jwt.DecodeUserClaims(want)
			got.ID, ref.ID, got.IssuedAt, ref.IssuedAt, got.Expires, ref.Expires = "", "", 0, 0, 0, 0
			if g, w := got.String(), ref.String(); g != w {
				t.Errorf("claims differ from Set.IssueUser:\n%s\n%s", g, w)
			}
			if _, _, err := tc.iss.Issue(vmA, k.pub, time.Hour); err != nil {
				t.Error(err)
			}
			c, err := busauth.ParseCreds(mustFile(t, token, k.seed))
			if err != nil {
				t.Fatal(err)
			}
			if c.Principal != busauth.Agent || c.InboxPrefix != busauth.AgentInboxPrefix(vmA) {
				t.Errorf("credentials %v", c)
			}
			a := e.with(t).connect(c)
			if _, err := a.subscribe(events.ChallengeSubject(vmA)); err != nil {
				t.Errorf("own challenge refused: %v", err)
			}
			a.mustRefuseSubscribe(events.ChallengeSubject(vmB))
			a.mustRefusePublish(events.VMEventSubject(vmA, events.KindVerdict))
		})
	}
	t.Run("refused", func(t *testing.T) {
		iss := set.AgentIssuer()
		k := newAgentKey(t)
		kp, _ := nkeys.CreateAccount()
		accPub, _ := kp.PublicKey()
		for _, tc := range []struct {
			name, vm, pub string
			ttl           time.Duration
		}{
			{"not a VM key", "Not-A-VM", k.pub, 0},
			{"wildcard name", "*", k.pub, 0},
			{"not a user key", vmA, accPub, 0},
			{"negative TTL", vmA, k.pub, -time.Second},
		} {
			if _, _, err := iss.Issue(tc.vm, tc.pub, tc.ttl); err == nil {
				t.Errorf("%s: issued", tc.name)
			}
		}
	})
	t.Run("load refused", func(t *testing.T) {
		seed := filepath.Join(small, busauth.SigningKeyFile(busauth.Agent))
		if err := os.Chmod(seed, 0o640); err != nil {
			t.Fatal(err)
		}
		if _, err := busauth.LoadAgentIssuer(small); !errors.Is(err, keyfile.ErrPermissive) {
			t.Errorf("permissive seed: %v", err)
		}
		// The keyguard's signing key is not the agents'.
		b, _ := os.ReadFile(filepath.Join(dir, busauth.SigningKeyFile(busauth.Keyguard)))
		if err := os.WriteFile(seed, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(seed, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := busauth.LoadAgentIssuer(small); !errors.Is(err, busauth.ErrInconsistent) {
			t.Errorf("another signing key: %v", err)
		}
	})
}

func mustFile(t *testing.T, token, seed string) []byte {
	t.Helper()
	b, err := jwt.FormatUserConfig(token, []byte(seed))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// revokerConn connects as the revoker user.
func revokerConn(t *testing.T, srv *natstest.Server, r *busauth.Revoker, opts ...nats.Option) *nats.Conn {
	t.Helper()
	return srv.ConnectCreds(r.Creds(), opts...)
}

// push pushes revoked with a deadline and says when to push again
// (Revoker.Push).
func push(t *testing.T, r *busauth.Revoker, nc *nats.Conn, revoked map[string]time.Time) (again time.Time) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	again, err := r.Push(ctx, nc, revoked)
	if err != nil {
		t.Fatal(err)
	}
	return again
}

// watchedAgent connects c without reconnecting and reports when the
// connection is closed.
func watchedAgent(t *testing.T, srv *natstest.Server, c busauth.Credentials) (*nats.Conn, <-chan time.Time) {
	t.Helper()
	closed := make(chan time.Time, 1)
	nc := srv.ConnectCreds(c, nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { closed <- time.Now() }),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	sub, err := nc.SubscribeSync(events.ChallengeSubject(c.Name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	return nc, closed
}

// refused reports whether the server refuses a connection with c.
func refused(url string, c busauth.Credentials) bool {
	nc, err := nats.Connect(url, nats.UserJWTAndSeed(c.JWT, c.Seed), nats.NoReconnect(), nats.Timeout(5*time.Second))
	if err != nil {
		return true
	}
	nc.Close()
	return false
}

// TestRevokerPushDisconnectsWithinSeconds: Revoker.Push, over the system
// account's revoker user, revokes agents: each revoked agent's connection
// is closed (measured from the push to the client seeing it closed) and
// refused from then on, while the other agents stay. A Revoker pushes the
// whole list each time (the base account and exactly the revocations
// given), so the list grows. A JWT of a revoked key issued after the
// revocation time (to the second) connects: a revocation revokes the
// JWTs issued at or before its time.
func TestRevokerPushDisconnectsWithinSeconds(t *testing.T) {
	const agents = 20
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	iss := set.AgentIssuer()
	r, err := set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	rc := revokerConn(t, srv, r)
	bystander, _ := watchedAgent(t, srv, issueAgent(t, iss, vmB))

	revoked := map[string]time.Time{}
	var took []time.Duration
	var last busauth.Credentials
	for i := range agents {
		c := issueAgent(t, iss, vmKey(i))
		_, closed := watchedAgent(t, srv, c)
		start := time.Now()
		revoked[c.PublicKey()] = start
		push(t, r, rc, revoked)
		select {
		case at := <-closed:
			took = append(took, at.Sub(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("agent %d still connected 10 s after its revocation was pushed", i)
		}
		if !refused(srv.URL(), c) {
			t.Fatalf("agent %d reconnected after its revocation", i)
		}
		last = c
	}
	if err := bystander.FlushTimeout(5 * time.Second); err != nil || !bystander.IsConnected() {
		t.Fatalf("revoking other agents disconnected a bystander: %v", err)
	}
	slices.Sort(took)
	t.Logf("revocation push → disconnect over %d agents: p50 %s, p99 %s, max %s", agents,
		took[len(took)/2], took[(len(took)*99+99)/100-1], took[len(took)-1])
	if took[len(took)-1] > 5*time.Second {
		t.Fatalf("a revocation took %s to disconnect", took[len(took)-1])
	}

	// A JWT issued for the revoked key after its revocation time connects;
	// JWT times are seconds, so wait for the clock to pass the revocation's.
	at := revoked[last.PublicKey()]
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Unix() <= at.Unix() {
		if time.Now().After(deadline) {
			t.Fatal("the clock does not advance")
		}
		time.Sleep(10 * time.Millisecond)
	}
	kp, _ := nkeys.FromSeed([]byte(last.Seed))
	pub, _ := kp.PublicKey()
	token, _, err := iss.Issue(last.Name, pub, 0)
	if err != nil {
		t.Fatal(err)
	}
	renewed := last
	renewed.JWT = token
	if refused(srv.URL(), renewed) {
		t.Error("a JWT issued after the revocation time is refused")
	}
	if !refused(srv.URL(), last) {
		t.Error("the revoked JWT connects again")
	}
	// Dropping a key from the list lifts its revocation: the list pushed is
	// the whole truth.
	delete(revoked, last.PublicKey())
	push(t, r, rc, revoked)
	if refused(srv.URL(), last) {
		t.Error("a revocation no longer pushed still applies")
	}
}

// TestRevokerUserMayOnlyPushTheAccount: the revoker user publishes the
// Vigil account's claim updates and nothing else, and hears only its own
// inbox; no user of the Vigil account may push an account update.
func TestRevokerUserMayOnlyPushTheAccount(t *testing.T) {
	e := newEnv(t)
	r, err := e.set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	if c := r.Creds(); c.Principal != busauth.SysRevoker || c.InboxPrefix != "_INBOX_revoker" {
		t.Fatalf("revoker credentials %v", c)
	}
	rev := e.connect(r.Creds())
	for _, s := range []string{
		busauth.ClaimsUpdateSubject(e.set.SystemAccount()),
		busauth.ClaimsUpdateSubject("*"),
		"$SYS.ACCOUNT." + e.set.Account() + ".CLAIMS.UPDATE",
		"$SYS.REQ.CLAIMS.UPDATE",
		"$SYS.REQ.SERVER.PING",
		"$SYS.REQ.ACCOUNT." + e.set.Account() + ".CONNZ",
		"$SYS.REQ.USER.INFO",
		"vigil.events.x",
		events.ChallengeSubject(vmA),
		"_INBOX_revoker.x",
	} {
		rev.mustRefusePublish(s)
	}
	for _, s := range []string{"_INBOX.>", ">", "$SYS.>", "_INBOX_agent.>", "$SYS.ACCOUNT.>"} {
		rev.mustRefuseSubscribe(s)
	}
	if _, err := rev.subscribe("_INBOX_revoker.x"); err != nil {
		t.Errorf("own inbox refused: %v", err)
	}

	// Nobody in the Vigil account pushes: an agent named in the push
	// stays connected.
	victim := issueAgent(t, e.set.AgentIssuer(), vmA)
	vc, _ := watchedAgent(t, e.srv, victim)
	for _, p := range busauth.Principals() {
		c := e.as(p)
		c.mustRefusePublish(busauth.ClaimsUpdateSubject(e.set.Account()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	kg := e.as(busauth.Keyguard)
	if _, err := r.Push(ctx, kg.nc, map[string]time.Time{victim.PublicKey(): time.Now()}); err == nil {
		t.Error("keyguard's own credentials pushed an account update")
	}
	if err := vc.FlushTimeout(5 * time.Second); err != nil || !vc.IsConnected() {
		t.Errorf("a push over keyguard's credentials disconnected the agent: %v", err)
	}
}

// TestPushSignedByAnotherKeyRefused: an account JWT signed by a key that
// is not an operator signing key (another operator's, the operator's own
// identity key, which strict signing key use forbids) revokes nobody. The
// operator's identity key is refused outright; another operator's JWT is
// stored by a full resolver (it checks signers when it loads an account,
// not when a permitted system user pushes one) but never applied. Either
// way the next push signed with the revocation key takes effect.
func TestPushSignedByAnotherKeyRefused(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, busauth.FileOperatorSeed))
	if err != nil {
		t.Fatal(err)
	}
	operatorKey, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		t.Fatal(err)
	}
	stranger, _ := nkeys.CreateOperator()
	srv := natstest.StartOperator(t, set)
	r, err := set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	rc := revokerConn(t, srv, r)
	victim := issueAgent(t, set.AgentIssuer(), vmA)
	vc, _ := watchedAgent(t, srv, victim)
	for _, tc := range []struct {
		name    string
		key     nkeys.KeyPair
		refused bool
	}{{"another operator's key", stranger, false}, {"the operator's identity key", operatorKey, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := r.WithKey(tc.key).Push(ctx, rc, map[string]time.Time{victim.PublicKey(): time.Now()})
			switch {
			case tc.refused && !errors.Is(err, busauth.ErrPushRefused):
				t.Fatalf("push: %v, want refused", err)
			case !tc.refused && err != nil && !errors.Is(err, busauth.ErrPushRefused):
				t.Fatalf("push: %v", err)
			}
			t.Logf("push: %v", err)
			if err := vc.FlushTimeout(5 * time.Second); err != nil || !vc.IsConnected() {
				t.Errorf("the push disconnected the agent: %v", err)
			}
		})
	}
	// The revocation key's push still takes effect.
	other := issueAgent(t, set.AgentIssuer(), vmB)
	_, closed := watchedAgent(t, srv, other)
	push(t, r, rc, map[string]time.Time{other.PublicKey(): time.Now()})
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("a push signed with the revocation key did not take effect after the foreign ones")
	}
	if !refused(srv.URL(), other) {
		t.Error("the revoked agent connects again")
	}
}

// TestRevokerPushAcrossCluster: in a 3-node cluster in operator mode, a
// push sent to node 1 reaches every node: an agent connected to node 3 is
// disconnected and refused there, an agent on node 2 stays.
func TestRevokerPushAcrossCluster(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c := natstest.StartOperatorCluster(t, set, 3)
	iss := set.AgentIssuer()
	r, err := set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	victim := issueAgent(t, iss, vmA)
	_, closed := watchedAgent(t, c.Servers[2], victim)
	bystander, _ := watchedAgent(t, c.Servers[1], issueAgent(t, iss, vmB))
	rc := revokerConn(t, c.Servers[0], r)
	start := time.Now()
	again := push(t, r, rc, map[string]time.Time{victim.PublicKey(): start})
	select {
	case at := <-closed:
		t.Logf("push via node 1 → disconnect on node 3: %s", at.Sub(start))
	case <-time.After(10 * time.Second):
		t.Fatal("the agent on node 3 is still connected 10 s after the push via node 1")
	}
	// A push that shared its second with the base account is settled by
	// another in a later second, as keyguard does (settleRevocations).
	// From then on no node may let the revoked key in again: the nodes'
	// full resolvers exchange the account's JWTs, and one issued in the
	// same second as another could otherwise replace it.
	if !again.IsZero() {
		time.Sleep(time.Until(again))
		push(t, r, rc, map[string]time.Time{victim.PublicKey(): start})
	}
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); {
		for i, srv := range c.Servers {
			if !refused(srv.URL(), victim) {
				t.Fatalf("the revoked agent connected to node %d again", i+1)
			}
		}
	}
	if err := bystander.FlushTimeout(5 * time.Second); err != nil || !bystander.IsConnected() {
		t.Errorf("the agent on node 2 was disconnected: %v", err)
	}
}

// TestRevokerFromDir: WriteDir writes the revocation key, the system
// account's revoker signing key and the revoker's credentials; LoadDir and
// LoadRevoker read them back; a directory written before them is refused
// as inconsistent, saying to make the identity again.
func TestRevokerFromDir(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	want, err := set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{busauth.FileRevocationKey, busauth.FileSystemSigner, busauth.CredsFile(busauth.SysRevoker)} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v", f, fi, err)
		}
	}
	fromSet, err := busauth.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	viaSet, err := fromSet.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := busauth.LoadRevoker(dir)
	if err != nil {
		t.Fatal(err)
	}
	op, _ := jwt.DecodeOperatorClaims(set.OperatorJWT())
	pub := newAgentKey(t).pub
	for name, got := range map[string]*busauth.Revoker{"LoadDir": viaSet, "LoadRevoker": loaded} {
		if got.Creds().JWT != want.Creds().JWT || got.Creds().Seed != want.Creds().Seed || got.Account() != set.Account() {
			t.Errorf("%s: revoker differs", name)
		}
		token, err := got.AccountJWT(map[string]time.Time{pub: time.Unix(1700000000, 0)})
		if err != nil {
			t.Fatal(err)
		}
		ac, _ := jwt.DecodeAccountClaims(token)
		wantAcc, _ := jwt.DecodeAccountClaims(set.AccountJWT())
		if !op.DidSign(ac) || ac.Subject != set.Account() || len(ac.Revocations) != 1 || ac.Revocations[pub] != 1700000000 ||
			!reflect.DeepEqual(ac.Limits, wantAcc.Limits) || len(ac.SigningKeys) != len(wantAcc.SigningKeys) {
			t.Errorf("%s: account JWT %s", name, ac)
		}
	}
	if _, err := loaded.AccountJWT(map[string]time.Time{set.Account(): time.Now()}); err == nil {
		t.Error("revoked an account key")
	}

	// Files that do not belong together.
	other, _ := busauth.Init(busauth.Options{})
	odir := t.TempDir()
	if err := other.WriteDir(odir); err != nil {
		t.Fatal(err)
	}
	swap := func(f string) func() {
		orig, _ := os.ReadFile(filepath.Join(dir, f))
		b, _ := os.ReadFile(filepath.Join(odir, f))
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
		return func() {
			if err := os.WriteFile(filepath.Join(dir, f), orig, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, f := range []string{busauth.FileRevocationKey, busauth.CredsFile(busauth.SysRevoker), busauth.FileSystemSigner} {
		undo := swap(f)
		if _, err := busauth.LoadDir(dir); !errors.Is(err, busauth.ErrInconsistent) {
			t.Errorf("LoadDir with another identity's %s: %v", f, err)
		}
		if f != busauth.FileSystemSigner {
			if _, err := busauth.LoadRevoker(dir); !errors.Is(err, busauth.ErrInconsistent) {
				t.Errorf("LoadRevoker with another identity's %s: %v", f, err)
			}
		}
		undo()
	}
	if err := os.Chmod(filepath.Join(dir, busauth.FileRevocationKey), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := busauth.LoadRevoker(dir); !errors.Is(err, keyfile.ErrPermissive) {
		t.Errorf("permissive revocation key: %v", err)
	}
	if err := os.Chmod(filepath.Join(dir, busauth.FileRevocationKey), 0o600); err != nil {
		t.Fatal(err)
	}

	// A directory made before revocation keys.
	for _, f := range []string{busauth.FileRevocationKey, busauth.FileSystemSigner, busauth.CredsFile(busauth.SysRevoker)} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	for name, load := range map[string]func(string) error{
		"LoadDir":     func(d string) error { _, err := busauth.LoadDir(d); return err },
		"LoadRevoker": func(d string) error { _, err := busauth.LoadRevoker(d); return err },
	} {
		err := load(dir)
		if !errors.Is(err, busauth.ErrInconsistent) || !strings.Contains(err.Error(), "make it again") {
			t.Errorf("%s of an old directory: %v", name, err)
		}
	}
	if _, err := busauth.LoadAgentIssuer(dir); err != nil {
		t.Errorf("LoadAgentIssuer of an old directory: %v", err)
	}
}

// TestKeyguardFilesAlone: the files keyguard is given (KeyguardFiles,
// docs/operations.md "Let agents enroll") are enough for its agent issuer and revoker; no
// other secret of the identity is needed.
func TestKeyguardFilesAlone(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	full := t.TempDir()
	if err := set.WriteDir(full); err != nil {
		t.Fatal(err)
	}
	only := filepath.Join(t.TempDir(), "keyguard")
	for _, name := range busauth.KeyguardFiles() {
		b, err := os.ReadFile(filepath.Join(full, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(only, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(only, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := busauth.LoadAgentIssuer(only); err != nil {
		t.Fatalf("agent issuer: %v", err)
	}
	if _, err := busauth.LoadRevoker(only); err != nil {
		t.Fatalf("revoker: %v", err)
	}
	if _, err := busauth.LoadDir(only); err == nil {
		t.Fatal("the whole identity loaded from keyguard's files")
	}
}

// TestRevokerPushAgainSettlesTheSecond: of two JWTs of one account issued
// in the same second, a full resolver keeps whichever it saw last, and a
// cluster's nodes exchange theirs in no set order, so a node could go back
// to an earlier revocation list. A push that shares its second with the
// push before it (or with the base account) is sent at once and asks for
// another; that one, made when asked, is signed in a later second than
// every JWT before it and asks for nothing more.
func TestRevokerPushAgainSettlesTheSecond(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	r, err := set.Revoker()
	if err != nil {
		t.Fatal(err)
	}
	base, err := jwt.DecodeAccountClaims(set.AccountJWT())
	if err != nil {
		t.Fatal(err)
	}
	// A stand-in for the servers: it keeps each JWT pushed and takes it.
	srv := natstest.Start(t)
	nc := srv.Connect()
	tokens := make(chan string, 16)
	if _, err := nc.Subscribe(busauth.ClaimsUpdateSubject(r.Account()), func(m *nats.Msg) {
		tokens <- string(m.Data)
		_ = m.Respond([]byte(`{"data":{"account":"` + r.Account() + `","code":200}}`))
	}); err != nil {
		t.Fatal(err)
	}
	revoked := map[string]time.Time{}
	pushOnce := func() (iat int64, again time.Time) {
		t.Helper()
		revoked[newAgentKey(t).pub] = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		again, err := r.Push(ctx, nc, revoked)
		if err != nil {
			t.Fatal(err)
		}
		ac, err := jwt.DecodeAccountClaims(<-tokens)
		if err != nil {
			t.Fatal(err)
		}
		if len(ac.Revocations) != len(revoked) {
			t.Fatalf("the JWT pushed revokes %d keys, want %d", len(ac.Revocations), len(revoked))
		}
		return ac.IssuedAt, again
	}
	latest, shared, due := base.IssuedAt, 0, time.Time{}
	for range 5 {
		iat, again := pushOnce()
		switch {
		case iat <= latest && (again.IsZero() || again.Unix() <= latest):
			t.Fatalf("a push issued at %d, not after the latest JWT's %d, asks to push again at %v", iat, latest, again)
		case iat > latest && !again.IsZero():
			t.Fatalf("a push in a second of its own (%d, latest %d) asks to push again at %v", iat, latest, again)
		case !again.IsZero():
			shared++
			due = again
		}
		latest = max(latest, iat)
	}
	if shared == 0 {
		t.Fatal("five pushes at once never shared a second")
	}
	time.Sleep(time.Until(due))
	iat, again := pushOnce()
	if iat <= latest || !again.IsZero() {
		t.Fatalf("the push asked for, at %v, was issued at %d (latest %d) and asks again at %v", due, iat, latest, again)
	}
}
