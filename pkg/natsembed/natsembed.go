// Package natsembed runs a nats-server with JetStream inside the current
// process: the embedded default of `vigil dev` and the base of natstest.
// Given an operator and its accounts (pkg/busauth), it runs in operator
// mode: every client authenticates with a user JWT of one of the accounts,
// and account updates (revocations) are pushed with UpdateAccount, or by a
// system account user on $SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE
// (busauth.Revoker), which the server's full resolver stores under
// StoreDir/jwt: it serves them from then on, across a Restart and to every
// node of a cluster.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
)

// Config describes an embedded server.
type Config struct {
	Name     string // server name; defaults to "vigil"
	Host     string // defaults to 127.0.0.1
	Port     int    // 0 picks a free port
	StoreDir string // JetStream storage directory (required)

	// Cluster, when ClusterPort is set, joins the server to a cluster.
	ClusterName string
	ClusterPort int
	Routes      []string // host:port of the other servers' cluster listeners

	// MaxPayload overrides the 1 MiB default maximum message size.
	MaxPayload int32
	// Logging enables the server's own log on stderr.
	Logging bool
	// ReadyTimeout bounds start-up; defaults to 10 s.
	ReadyTimeout time.Duration
	// ConfigText is nats-server configuration applied before the fields
	// above, which take precedence: accounts, users, exports and imports.
	ConfigText string

	// OperatorJWT, when set, runs the server in operator mode: it trusts
	// this operator, SystemAccount (a public key) is the system account,
	// and AccountJWTs, signed by the operator, are preloaded into its full
	// resolver (every account clients use, the system account's included).
	OperatorJWT   string
	SystemAccount string
	AccountJWTs   []string
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server

	mu       sync.Mutex
	cfg      Config
	operator *jwt.OperatorClaims
	resolver *server.DirAccResolver
}

// ErrNotReady is returned when the server does not accept connections in time.
var ErrNotReady = errors.New("natsembed: server not ready")

// Start starts a server and waits until it accepts connections. With
// Port 0, a free port is chosen and kept in Config() so that a restart
// reuses it.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Name == "" {
		cfg.Name = "vigil"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.Port == 0 {
		p, err := FreePort(cfg.Host)
		if err != nil {
			return nil, err
		}
		cfg.Port = p
	}
	opts := &server.Options{}
	if cfg.ConfigText != "" {
		if err := opts.ProcessConfigString(cfg.ConfigText); err != nil {
			return nil, fmt.Errorf("natsembed: configuration: %w", err)
		}
	}
	opts.ServerName = cfg.Name
	opts.Host = cfg.Host
	opts.Port = cfg.Port
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	opts.NoSigs = true
	opts.NoLog = !cfg.Logging
	opts.MaxPayload = cfg.MaxPayload
	var op *jwt.OperatorClaims
	var resolver *server.DirAccResolver
	if cfg.OperatorJWT != "" {
		var err error
		if op, resolver, err = operatorMode(cfg); err != nil {
			return nil, err
		}
		opts.TrustedOperators = []*jwt.OperatorClaims{op}
		opts.SystemAccount = cfg.SystemAccount
		opts.AccountResolver = resolver
	}
	if cfg.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.Host, Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse("nats://" + r)
			if err != nil {
				return nil, fmt.Errorf("natsembed: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	if cfg.Logging {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(cfg.ReadyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("%w after %s on %s:%d", ErrNotReady, cfg.ReadyTimeout, cfg.Host, cfg.Port)
	}
	return &Server{Server: s, cfg: cfg, operator: op, resolver: resolver}, nil
}

// operatorMode checks the operator and the accounts of cfg and preloads
// the accounts into a full resolver kept in StoreDir/jwt (nats-server's
// `resolver: {type: full}`): it stores the account JWTs pushed through
// the system account (a revocation) and serves them from then on, also to
// a server that had not loaded the account when the push came, after a
// restart, and to the other nodes of a cluster. A preloaded JWT never
// replaces a newer one stored there.
func operatorMode(cfg Config) (*jwt.OperatorClaims, *server.DirAccResolver, error) {
	op, err := jwt.DecodeOperatorClaims(cfg.OperatorJWT)
	if err != nil {
		return nil, nil, fmt.Errorf("natsembed: operator JWT: %w", err)
	}
	if cfg.SystemAccount == "" {
		return nil, nil, errors.New("natsembed: operator mode needs the system account")
	}
	resolver, err := server.NewDirAccResolver(filepath.Join(cfg.StoreDir, "jwt"), 0, time.Minute, server.NoDelete)
	if err != nil {
		return nil, nil, fmt.Errorf("natsembed: account resolver: %w", err)
	}
	for _, token := range cfg.AccountJWTs {
		ac, err := verifyAccount(op, token)
		if err != nil {
			return nil, nil, err
		}
		if err := preload(resolver, ac, token); err != nil {
			return nil, nil, fmt.Errorf("natsembed: account %s: %w", ac.Subject, err)
		}
	}
	if _, err := resolver.Fetch(cfg.SystemAccount); err != nil {
		return nil, nil, fmt.Errorf("natsembed: the system account %s is not among the accounts", cfg.SystemAccount)
	}
	return op, resolver, nil
}

// preload stores an account's JWT in the resolver unless the resolver
// holds one issued in the same second or later (one pushed, a revocation,
// since the JWT given was made).
func preload(r *server.DirAccResolver, ac *jwt.AccountClaims, token string) error {
	if stored, err := r.LoadAcc(ac.Subject); err == nil && stored != "" {
		if sc, err := jwt.DecodeAccountClaims(stored); err == nil && sc.IssuedAt >= ac.IssuedAt {
			return nil
		}
	}
	return r.SaveAcc(ac.Subject, token)
}

// ErrUntrustedAccount is matched by errors.Is for an account JWT the
// server's operator did not sign.
var ErrUntrustedAccount = errors.New("natsembed: account JWT not signed by the trusted operator")

// verifyAccount decodes an account JWT (which checks its signature) and
// checks that op signed it and that it is valid.
func verifyAccount(op *jwt.OperatorClaims, token string) (*jwt.AccountClaims, error) {
	ac, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return nil, fmt.Errorf("natsembed: account JWT: %w", err)
	}
	if !op.DidSign(ac) {
		return nil, fmt.Errorf("%w: account %s (%s) issued by %s", ErrUntrustedAccount, ac.Subject, ac.Name, ac.Issuer)
	}
	vr := jwt.CreateValidationResults()
	ac.Validate(vr)
	if vr.IsBlocking(true) {
		return nil, fmt.Errorf("natsembed: account %s (%s): %w", ac.Subject, ac.Name, errors.Join(vr.Errors()...))
	}
	return ac, nil
}

// ErrNotOperatorMode is returned by UpdateAccount on a server that does
// not run in operator mode.
var ErrNotOperatorMode = errors.New("natsembed: the server does not run in operator mode")

// UpdateAccount replaces an account's JWT, as a resolver update does: the
// server applies it at once (a revoked user's connections are closed, a
// changed permission template closes the connections of the users of its
// signing key) and Config returns it from then on, so that a server
// started again from Config has it. The JWT must be signed by the trusted
// operator.
func (s *Server) UpdateAccount(token string) error {
	if s.resolver == nil {
		return ErrNotOperatorMode
	}
	ac, err := verifyAccount(s.operator, token)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.resolver.SaveAcc(ac.Subject, token); err != nil {
		return fmt.Errorf("natsembed: account %s: %w", ac.Subject, err)
	}
	jwts := slices.Clone(s.cfg.AccountJWTs)
	replaced := false
	for i, t := range jwts {
		if old, err := jwt.DecodeAccountClaims(t); err == nil && old.Subject == ac.Subject {
			jwts[i], replaced = token, true
		}
	}
	if !replaced {
		jwts = append(jwts, token)
	}
	s.cfg.AccountJWTs = jwts
	acc, err := s.LookupAccount(ac.Subject)
	if err != nil {
		return fmt.Errorf("natsembed: account %s: %w", ac.Subject, err)
	}
	s.UpdateAccountClaims(acc, ac)
	return nil
}

// Config returns the configuration the server runs with, its port filled
// in (and its accounts as last updated).
func (s *Server) Config() Config {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cfg
}

// URL is the client URL of the server.
func (s *Server) URL() string {
	cfg := s.Config()
	return "nats://" + net.JoinHostPort(cfg.Host, strconv.Itoa(cfg.Port))
}

// Stop shuts the server down and waits for it to finish.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// FreePort returns a TCP port that was free on host a moment ago.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("natsembed: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
