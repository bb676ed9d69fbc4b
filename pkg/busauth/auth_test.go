package busauth_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// signingKey reads p's scoped signing key from a directory written by
// WriteDir.
func signingKey(t *testing.T, set *busauth.Set, p busauth.Principal) nkeys.KeyPair {
	t.Helper()
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	seed, err := os.ReadFile(filepath.Join(dir, busauth.SigningKeyFile(p)))
	if err != nil {
		t.Fatal(err)
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// agentJWT signs an agent user JWT for a new key with signer, edited by
// edit first.
func agentJWT(t *testing.T, set *busauth.Set, signer nkeys.KeyPair, edit func(*jwt.UserClaims)) (token string, seed string) {
	t.Helper()
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	s, _ := user.Seed()
	uc := jwt.NewUserClaims(pub)
	uc.Name = vmA
	uc.IssuerAccount = set.Account()
	uc.SetScoped(true)
	uc.Expires = time.Now().Add(time.Hour).Unix()
	if edit != nil {
		edit(uc)
	}
	token, err = uc.Encode(signer)
	if err != nil {
		t.Fatal(err)
	}
	return token, string(s)
}

// TestBadCredentialsRefused: the server refuses a connection whose user
// JWT is expired, signed by a key the account does not know or by another
// operator's account, altered after signing, carries permissions of its
// own under a scoped key, is a bearer token, or comes with another key's
// seed, and one without credentials; the good ones connect.
func TestBadCredentialsRefused(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	agentKey := signingKey(t, set, busauth.Agent)
	strangerKey, _ := nkeys.CreateAccount()
	other, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	otherCreds, _ := other.Creds(busauth.Ingest)
	good, goodSeed := agentJWT(t, set, agentKey, nil)
	_, anotherSeed := agentJWT(t, set, agentKey, nil)
	// The payload of a good JWT with its name changed, the signature kept.
	parts := strings.Split(good, ".")
	claims, err := jwt.DecodeUserClaims(good)
	if err != nil {
		t.Fatal(err)
	}
	claims.Name = vmB
	forged, _ := claims.Encode(strangerKey)
	altered := parts[0] + "." + strings.Split(forged, ".")[1] + "." + parts[2]

	type cred struct{ jwt, seed string }
	sign := func(signer nkeys.KeyPair, edit func(*jwt.UserClaims)) cred {
		token, seed := agentJWT(t, set, signer, edit)
		return cred{token, seed}
	}
	for _, tc := range []struct {
		name string
		cred cred
		ok   bool
	}{
		{"good", cred{good, goodSeed}, true},
		{"expired", sign(agentKey, func(uc *jwt.UserClaims) { uc.Expires = time.Now().Add(-time.Minute).Unix() }), false},
		{"not yet valid", sign(agentKey, func(uc *jwt.UserClaims) { uc.NotBefore = time.Now().Add(time.Hour).Unix() }), false},
		{"signed by a key the account does not know", sign(strangerKey, nil), false},
		{"altered after signing", cred{altered, goodSeed}, false},
		{"permissions of its own under a scoped key", sign(agentKey, func(uc *jwt.UserClaims) {
			uc.SetScoped(false)
			uc.Sub.Allow.Add(">")
		}), false},
		{"bearer token", sign(agentKey, func(uc *jwt.UserClaims) { uc.BearerToken = true }), false},
		{"another key's seed", cred{good, anotherSeed}, false},
		{"a user of another operator", cred{otherCreds.JWT, otherCreds.Seed}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(srv.URL(), nats.UserJWTAndSeed(tc.cred.jwt, tc.cred.seed), nats.NoReconnect(), nats.Timeout(5*time.Second))
			if nc != nil {
				defer nc.Close()
			}
			switch {
			case tc.ok && err != nil:
				t.Fatalf("refused: %v", err)
			case !tc.ok && err == nil:
				t.Fatal("connected")
			case !tc.ok && !strings.Contains(strings.ToLower(err.Error()), "authorization violation"):
				t.Fatalf("refused with %v, want an authorization violation", err)
			}
		})
	}
	t.Run("no credentials", func(t *testing.T) {
		nc, err := nats.Connect(srv.URL(), nats.NoReconnect())
		if err == nil {
			nc.Close()
			t.Fatal("connected")
		}
	})
}

// TestAgentNamesAreVMKeys: the agent template makes subjects of the
// user's name, which the server does not check; a name with a wildcard
// or a dot would widen them, so none is ever signed.
func TestAgentNamesAreVMKeys(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	user, _ := nkeys.CreateUser()
	pub, _ := user.PublicKey()
	for _, name := range []string{"*", ">", "", vmA + ".x", vmA[:25], vmA + "a", strings.ToUpper(vmA), "aaaaaaaaaaaaaaaaaaaaaaaaa1"} {
		if _, err := set.AgentCreds(name, 0); err == nil {
			t.Errorf("agent credentials named %q", name)
		}
		if _, err := set.IssueUser(busauth.Agent, name, pub, 0); err == nil {
			t.Errorf("agent JWT named %q", name)
		}
	}
	for _, name := range []string{"*", ">", "", "a.b", "-a", "A", strings.Repeat("a", 65)} {
		if _, err := set.AdminCreds(name, 0); err == nil {
			t.Errorf("admin credentials named %q", name)
		}
	}
	if _, err := set.IssueUser(busauth.Ingest, "keyguard", pub, 0); err == nil {
		t.Error("an ingest user named keyguard")
	}
	if _, err := set.IssueUser(busauth.Agent, vmA, "not a key", 0); err == nil {
		t.Error("a JWT for no key")
	}
}

// TestUserExpiryClosesConnection: a connected agent whose JWT expires is
// disconnected by the server and cannot come back with it.
func TestUserExpiryClosesConnection(t *testing.T) {
	e := newEnv(t)
	creds, err := e.set.AgentCreds(vmA, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	c := e.connect(creds, nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	c.flush()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("still connected 10 s after the JWT expired")
	}
	// Expiry has a granularity of one second: within the second it
	// expires in, a JWT is still valid.
	uc, err := jwt.DecodeUserClaims(creds.JWT)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(time.Unix(uc.Expires+1, 0)))
	if nc, err := nats.Connect(e.srv.URL(), nats.UserJWTAndSeed(creds.JWT, creds.Seed), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("reconnected with an expired JWT")
	}
}

// TestRevokedAgentDisconnectedWithinSeconds: revoking an agent's key
// (Set.Revoke, the account JWT pushed to the server) closes its
// connection, measured from the revocation to the client seeing its
// connection closed, and it cannot connect again; other agents stay.
func TestRevokedAgentDisconnectedWithinSeconds(t *testing.T) {
	const agents = 20
	e := newEnv(t)
	bystander := e.agent(vmB)
	var took []time.Duration
	for i := range agents {
		vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm" + string(rune('a'+i)))
		creds, err := e.set.AgentCreds(vm, 0)
		if err != nil {
			t.Fatal(err)
		}
		closed := make(chan time.Time, 1)
		c := e.connect(creds, nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { closed <- time.Now() }))
		if _, err := c.subscribe(events.ChallengeSubject(vm)); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := e.set.Revoke(creds.PublicKey()); err != nil {
			t.Fatal(err)
		}
		e.srv.UpdateAccount()
		select {
		case at := <-closed:
			took = append(took, at.Sub(start))
		case <-time.After(10 * time.Second):
			t.Fatalf("agent %d still connected 10 s after its revocation", i)
		}
		if nc, err := nats.Connect(e.srv.URL(), nats.UserJWTAndSeed(creds.JWT, creds.Seed), nats.NoReconnect()); err == nil {
			nc.Close()
			t.Fatalf("agent %d reconnected after its revocation", i)
		}
	}
	bystander.flush()
	if !bystander.nc.IsConnected() {
		t.Fatal("revoking other agents disconnected a bystander")
	}
	slices.Sort(took)
	t.Logf("revocation → disconnect over %d agents: p50 %s, p99 %s, max %s", agents,
		took[len(took)/2], took[(len(took)*99+99)/100-1], took[len(took)-1])
	if took[len(took)-1] > 5*time.Second {
		t.Fatalf("a revocation took %s to disconnect", took[len(took)-1])
	}
}

// TestServerConfigSnippet: a server configured with ServerConfig alone
// (operator, system account, the memory or the full resolver with the
// accounts preloaded) runs JetStream for the principals and refuses
// others; with the full resolver a revocation pushed before the account
// is loaded holds when it loads, and after a restart.
func TestServerConfigSnippet(t *testing.T) {
	for _, full := range []bool{false, true} {
		name := "memory resolver"
		if full {
			name = "full resolver"
		}
		t.Run(name, func(t *testing.T) { testServerConfigSnippet(t, full) })
	}
}

func testServerConfigSnippet(t *testing.T, full bool) {
	opts := busauth.Options{}
	if full {
		opts.ResolverDir = filepath.Join(t.TempDir(), "jwt")
	}
	set, err := busauth.Init(opts)
	if err != nil {
		t.Fatal(err)
	}
	var victim busauth.Credentials
	if full {
		// Revoked before any user of the account connects.
		victim = issueAgent(t, set.AgentIssuer(), vmA)
	}
	srv := natstest.StartConfigured(t, set.ServerConfig())
	if full {
		// JWT times are in seconds, and a server's preload replaces a stored
		// account JWT issued in the same second: push, as in life, after the
		// second the identity was made in.
		ac, err := jwt.DecodeAccountClaims(set.AccountJWT())
		if err != nil {
			t.Fatal(err)
		}
		for time.Now().Unix() <= ac.IssuedAt {
			time.Sleep(10 * time.Millisecond)
		}
		r, err := set.Revoker()
		if err != nil {
			t.Fatal(err)
		}
		push(t, r, revokerConn(t, srv, r), map[string]time.Time{victim.PublicKey(): time.Now()})
		if !refused(srv.URL(), victim) {
			t.Fatal("a revocation pushed before the account was loaded does not hold")
		}
		srv.Restart()
		if !refused(srv.URL(), victim) {
			t.Fatal("the revocation does not hold after a restart")
		}
	}
	admin, _ := set.Creds(busauth.Admin)
	nc := srv.ConnectCreds(admin)
	natstest.Provision(t, nc, events.Topology{})
	ing, _ := set.Creds(busauth.Ingest)
	nc = srv.ConnectCreds(ing)
	if err := nc.Publish(events.RawSubject("eventgrid"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil || nc.LastError() != nil {
		t.Fatalf("ingest: %v, %v", err, nc.LastError())
	}
	if nc, err := nats.Connect(srv.URL(), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	}
}
