// Package natstest runs real nats-servers with JetStream for tests: a single
// node, open or in operator mode with Vigil's identity (StartOperator,
// ConnectAs), or an in-process three-node cluster, open (StartCluster) or in
// operator mode (StartOperatorCluster), with helpers to find and stop a
// stream's leader.
package natstest

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// Server is one embedded nats-server owned by a test.
type Server struct {
	t    testing.TB
	cfg  natsembed.Config
	srv  *natsembed.Server
	auth *busauth.Set // operator mode
}

// Start runs a single JetStream server in a temporary directory; it stops
// when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	return start(t, natsembed.Config{Name: "test", StoreDir: t.TempDir()})
}

// StartConfigured runs a single JetStream server with configText (nats-server
// syntax: accounts, users, exports, imports) in a temporary directory; it
// stops when the test ends.
func StartConfigured(t testing.TB, configText string) *Server {
	t.Helper()
	return start(t, natsembed.Config{Name: "test", StoreDir: t.TempDir(), ConfigText: configText})
}

// StartOperator runs a single JetStream server in operator mode in a
// temporary directory: it trusts auth's operator and serves its accounts
// from its full resolver (pkg/natsembed). Clients connect as principals (ConnectAs, ConnectAgent);
// JetStream provisions as the first administrator. It stops when the test
// ends.
func StartOperator(t testing.TB, auth *busauth.Set) *Server {
	t.Helper()
	s := start(t, natsembed.Config{Name: "test", StoreDir: t.TempDir(),
		OperatorJWT: auth.OperatorJWT(), SystemAccount: auth.SystemAccount(), AccountJWTs: auth.AccountJWTs()})
	s.auth = auth
	return s
}

func start(t testing.TB, cfg natsembed.Config) *Server {
	t.Helper()
	srv, err := natsembed.Start(cfg)
	if err != nil {
		t.Fatalf("natstest: %v", err)
	}
	s := &Server{t: t, cfg: srv.Config(), srv: srv}
	t.Cleanup(s.Stop)
	return s
}

// URL is the server's client URL.
func (s *Server) URL() string { return "nats://" + fmt.Sprintf("%s:%d", s.cfg.Host, s.cfg.Port) }

// Name is the server's name.
func (s *Server) Name() string { return s.cfg.Name }

// Running reports whether the server is up.
func (s *Server) Running() bool { return s.srv != nil }

// Stop shuts the server down (a no-op when it is already stopped).
func (s *Server) Stop() {
	if s.srv != nil {
		s.cfg = s.srv.Config() // accounts updated since the start
		s.srv.Stop()
		s.srv = nil
	}
}

// Restart stops the server, if running, and starts it again on the same port
// and storage directory, as after a crash and restart of NATS.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	srv, err := natsembed.Start(s.cfg)
	if err != nil {
		s.t.Fatalf("natstest: restart %s: %v", s.cfg.Name, err)
	}
	s.srv = srv
}

// Embedded returns the running server (nil when stopped).
func (s *Server) Embedded() *natsembed.Server { return s.srv }

// Connect opens a client connection that reconnects forever and is closed
// when the test ends.
func (s *Server) Connect(opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	return connect(s.t, s.URL(), opts...)
}

// ConnectCreds opens a client connection with c's JWT and seed and its
// inbox prefix, as Connect does.
func (s *Server) ConnectCreds(c busauth.Credentials, opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	base := []nats.Option{nats.UserJWTAndSeed(c.JWT, c.Seed), nats.Name(c.Name)}
	if c.InboxPrefix != "" {
		base = append(base, nats.CustomInboxPrefix(c.InboxPrefix))
	}
	return s.Connect(append(base, opts...)...)
}

// ConnectAs connects as the user StartOperator's identity made for p (for
// busauth.Admin the first administrator, for busauth.SysRevoker the
// system account's revoker user).
func (s *Server) ConnectAs(p busauth.Principal, opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	c, err := s.Auth().Creds(p)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	return s.ConnectCreds(c, opts...)
}

// ConnectAgent connects as the agent of the VM with key vm, with
// credentials minted for it.
func (s *Server) ConnectAgent(vm string, opts ...nats.Option) *nats.Conn {
	s.t.Helper()
	c, err := s.Auth().AgentCreds(vm, 0)
	if err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
	return s.ConnectCreds(c, opts...)
}

// Auth is the identity of a server started with StartOperator.
func (s *Server) Auth() *busauth.Set {
	s.t.Helper()
	if s.auth == nil {
		s.t.Fatal("natstest: the server does not run in operator mode (StartOperator)")
	}
	return s.auth
}

// UpdateAccount gives the server the Vigil account's JWT as it stands now
// (after busauth.Set.Revoke), which it applies at once and keeps across
// Restart.
func (s *Server) UpdateAccount() {
	s.t.Helper()
	if err := s.srv.UpdateAccount(s.Auth().AccountJWT()); err != nil {
		s.t.Fatalf("natstest: %v", err)
	}
}

// JetStream connects and returns a JetStream context with every Vigil stream
// and bucket provisioned; in operator mode as the first administrator.
func (s *Server) JetStream() (*nats.Conn, jetstream.JetStream) {
	s.t.Helper()
	var nc *nats.Conn
	if s.auth != nil {
		nc = s.ConnectAs(busauth.Admin)
	} else {
		nc = s.Connect()
	}
	js := Provision(s.t, nc, events.Topology{})
	return nc, js
}

func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	base := []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond), nats.Timeout(5 * time.Second)}
	nc, err := nats.Connect(url, append(base, opts...)...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Provision provisions every Vigil stream and bucket over nc.
func Provision(t testing.TB, nc *nats.Conn, topo events.Topology) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	// Provisioning is idempotent: on a loaded machine a replicated stream can
	// take longer than one attempt's deadline to be placed, so try again.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := events.Provision(ctx, js, topo)
		cancel()
		if err == nil {
			return js
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: provision: %v", err)
		}
		t.Logf("natstest: provision: %v; retrying", err)
		time.Sleep(time.Second)
	}
}

// Cluster is an in-process JetStream cluster.
type Cluster struct {
	t       testing.TB
	Servers []*Server
	// account holds the streams: the global account, or in operator mode
	// the Vigil account.
	account string
}

// StartCluster runs an n-node JetStream cluster (n is usually 3) and waits
// until it has a meta leader.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	return runCluster(t, n, nil)
}

// StartOperatorCluster runs an n-node JetStream cluster in operator mode,
// as StartOperator does one server: every node trusts auth's operator and
// serves its accounts from its full resolver, and each Server connects as its
// principals (ConnectAs, ConnectAgent). It waits until the cluster has a
// meta leader.
func StartOperatorCluster(t testing.TB, auth *busauth.Set, n int) *Cluster {
	t.Helper()
	return runCluster(t, n, auth)
}

// runCluster starts an n-node cluster, in operator mode with auth when
// not nil.
func runCluster(t testing.TB, n int, auth *busauth.Set) *Cluster {
	t.Helper()
	// Ports are picked free and bound later, so another process (test
	// packages run in parallel) can take one in between, and that node
	// never gets ready: start the whole cluster again on fresh ports.
	const attempts = 3
	var err error
	for range attempts {
		var c *Cluster
		if c, err = startCluster(t, n, auth); err == nil {
			for _, s := range c.Servers {
				t.Cleanup(s.Stop)
			}
			c.WaitForMetaLeader(30 * time.Second)
			return c
		}
		t.Logf("natstest: cluster: %v; starting it again on other ports", err)
	}
	t.Fatalf("natstest: cluster not started in %d attempts: %v", attempts, err)
	return nil
}

// startCluster starts n clustered servers on free ports, in operator mode
// with auth when not nil; on an error it stops those that started.
func startCluster(t testing.TB, n int, auth *busauth.Set) (*Cluster, error) {
	ports := make([]int, n)
	routes := make([]string, n)
	for i := range ports {
		p, err := natsembed.FreePort("127.0.0.1")
		if err != nil {
			return nil, err
		}
		ports[i] = p
		routes[i] = fmt.Sprintf("127.0.0.1:%d", p)
	}
	dir := t.TempDir()
	c := &Cluster{t: t, Servers: make([]*Server, n), account: "$G"}
	if auth != nil {
		c.account = auth.Account()
	}
	errs := make(chan error, n)
	for i := range n {
		cfg := natsembed.Config{
			Name:         fmt.Sprintf("n%d", i+1),
			StoreDir:     filepath.Join(dir, fmt.Sprintf("n%d", i+1)),
			ClusterName:  "vigil-test",
			ClusterPort:  ports[i],
			Routes:       routes,
			ReadyTimeout: 30 * time.Second,
		}
		if auth != nil {
			cfg.OperatorJWT, cfg.SystemAccount, cfg.AccountJWTs = auth.OperatorJWT(), auth.SystemAccount(), auth.AccountJWTs()
		}
		go func() {
			srv, err := natsembed.Start(cfg)
			if err != nil {
				errs <- err
				return
			}
			c.Servers[i] = &Server{t: t, cfg: srv.Config(), srv: srv, auth: auth}
			errs <- nil
		}()
	}
	var first error
	for range n {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		for _, s := range c.Servers {
			if s != nil {
				s.Stop()
			}
		}
		return nil, first
	}
	return c, nil
}

// URLs is the comma-separated list of every server's client URL.
func (c *Cluster) URLs() string {
	u := ""
	for i, s := range c.Servers {
		if i > 0 {
			u += ","
		}
		u += s.URL()
	}
	return u
}

// Connect opens a client connection to the cluster.
func (c *Cluster) Connect(opts ...nats.Option) *nats.Conn {
	c.t.Helper()
	return connect(c.t, c.URLs(), opts...)
}

// WaitForMetaLeader waits until a JetStream meta leader sees every running
// server as an online peer, so that replicated streams can be placed.
func (c *Cluster) WaitForMetaLeader(timeout time.Duration) {
	c.t.Helper()
	running := 0
	for _, s := range c.Servers {
		if s.srv != nil {
			running++
		}
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, s := range c.Servers {
			if s.srv != nil && s.srv.JetStreamIsLeader() && len(s.srv.JetStreamClusterPeers()) >= running {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("natstest: no meta leader with %d online peers after %s", running, timeout)
}

// StreamLeader returns the server leading stream in the cluster's account
// (the global one, or the Vigil account in operator mode),
// waiting up to timeout for one to be elected.
func (c *Cluster) StreamLeader(stream string, timeout time.Duration) *Server {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, s := range c.Servers {
			if s.srv != nil && s.srv.JetStreamIsStreamLeader(c.account, stream) {
				return s
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("natstest: stream %s has no leader after %s", stream, timeout)
	return nil
}

// WaitAcks waits for every asynchronous publish in fs to be acknowledged
// by its stream; it fails t on the first refusal or when ctx ends.
func WaitAcks(ctx context.Context, t testing.TB, fs []jetstream.PubAckFuture) {
	t.Helper()
	for _, f := range fs {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish: %v", err)
		case <-ctx.Done():
			t.Fatalf("publish: %v", ctx.Err())
		}
	}
}
