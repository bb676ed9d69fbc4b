package natsembed_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// TestOperatorMode: a server given an operator and its accounts accepts
// the accounts' users only; UpdateAccount takes account JWTs of its
// operator only, and applies them: a revoked user is disconnected and
// refused, and Config carries the update.
func TestOperatorMode(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	other, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := natsembed.Config{StoreDir: t.TempDir(), OperatorJWT: set.OperatorJWT(), SystemAccount: set.SystemAccount(), AccountJWTs: set.AccountJWTs()}
	if _, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir(), OperatorJWT: set.OperatorJWT(), SystemAccount: set.SystemAccount(),
		AccountJWTs: other.AccountJWTs()}); !errors.Is(err, natsembed.ErrUntrustedAccount) {
		t.Fatalf("another operator's accounts: %v", err)
	}
	if _, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir(), OperatorJWT: set.OperatorJWT(), SystemAccount: set.SystemAccount(),
		AccountJWTs: set.AccountJWTs()[1:]}); err == nil {
		t.Fatal("started without the system account")
	}
	srv, err := natsembed.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	if nc, err := nats.Connect(srv.URL()); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	}
	agent, err := set.AgentCreds("aaaaaaaaaaaaaaaaaaaaaaaaaa", 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(srv.URL(), nats.UserJWTAndSeed(agent.JWT, agent.Seed), nats.NoReconnect(), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()

	if err := srv.UpdateAccount(other.AccountJWT()); !errors.Is(err, natsembed.ErrUntrustedAccount) {
		t.Fatalf("another operator's account: %v", err)
	}
	if err := set.Revoke(agent.PublicKey()); err != nil {
		t.Fatal(err)
	}
	if err := srv.UpdateAccount(set.AccountJWT()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked user is still connected after 10 s")
	}
	if nc, err := nats.Connect(srv.URL(), nats.UserJWTAndSeed(agent.JWT, agent.Seed), nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("a revoked user connected")
	}
	found := false
	for _, j := range srv.Config().AccountJWTs {
		found = found || j == set.AccountJWT()
	}
	if !found || len(srv.Config().AccountJWTs) != 2 {
		t.Fatal("Config does not carry the updated account")
	}

	open, err := natsembed.Start(natsembed.Config{StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(open.Stop)
	if err := open.UpdateAccount(set.AccountJWT()); !errors.Is(err, natsembed.ErrNotOperatorMode) {
		t.Fatalf("update on an open server: %v", err)
	}
}
