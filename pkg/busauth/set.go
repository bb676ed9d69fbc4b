package busauth

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// Options configure Init. The zero value is usable.
type Options struct {
	// OperatorName names the operator; default "vigil".
	OperatorName string
	// AccountName names the Vigil account; default "VIGIL".
	AccountName string
	// UserTTL bounds the life of the users Init makes (the services', the
	// readers' and the first administrator's); 0: they do not expire.
	UserTTL time.Duration
	// ResolverDir, when set, is the directory where each nats-server keeps
	// the account JWTs: ServerConfig then configures the full resolver,
	// which stores pushed account updates (keyguard's revocations), shares
	// them across a cluster and keeps them across restarts. Empty: the
	// memory resolver, which holds a pushed update only while the server
	// has the account loaded.
	ResolverDir string
	// JetStreamDisk and JetStreamMemory bound the Vigil account's
	// JetStream storage in bytes: 0 keeps the default (disk: the server's
	// own bound, memory: 256 MiB), -1 lifts the bound.
	JetStreamDisk, JetStreamMemory int64
	// MaxConnections bounds the Vigil account's connections (every
	// service replica, administrator and agent); 0: no bound.
	MaxConnections int64
}

// Defaults.
const (
	DefaultOperatorName = "vigil"
	DefaultAccountName  = "VIGIL"
	SystemAccountName   = "SYS"
	// DefaultAgentTTL is how long an agent's user JWT is valid unless
	// told otherwise: the agent renews it by enrolling again.
	DefaultAgentTTL = 24 * time.Hour

	defaultJetStreamMemory = 256 << 20
	// maxStreams and maxConsumers bound the account: 6 streams and 6
	// buckets, 7 durables and the readers' ordered consumers.
	maxStreams   = 64
	maxConsumers = 4096
	// agentMaxSubs and agentMaxPayload bound one agent's connection: its
	// challenge and its inbox; a request or reply (an evidence bundle, a
	// release request) is at most 1 MiB (bus.MaxRequestSize).
	agentMaxSubs    = 16
	agentMaxPayload = 1 << 20
)

// Set is Vigil's NATS identity: the operator, the system and Vigil
// accounts, the principals' scoped signing keys and the users made with
// them. Its methods are safe for concurrent use.
type Set struct {
	mu sync.Mutex

	operator, operatorSigner nkeys.KeyPair
	// revocationKey is the operator signing key of Revoker: it signs
	// only the Vigil account's revocation updates.
	revocationKey nkeys.KeyPair
	resolverDir   string // Options.ResolverDir
	operatorJWT   string
	system        account
	// systemSigner is the system account's scoped signing key of the
	// revoker user (SysRevoker).
	systemSigner nkeys.KeyPair
	vigil        account
	signers      map[Principal]nkeys.KeyPair
	users        map[Principal]Credentials // SysRevoker's too
}

// account is an account's claims and their JWT as last signed.
type account struct {
	claims *jwt.AccountClaims
	jwt    string
}

// Init makes a new identity: operator, operator signing key and
// revocation key (an operator signing key for Revoker), the system
// account with a scoped signing key for the revoker user, the Vigil
// account with JetStream and one scoped signing key per principal, a user
// for every principal of Principals and the revoker user (SysRevoker).
func Init(opts Options) (*Set, error) {
	if opts.OperatorName == "" {
		opts.OperatorName = DefaultOperatorName
	}
	if opts.AccountName == "" {
		opts.AccountName = DefaultAccountName
	}
	if opts.UserTTL < 0 {
		return nil, errors.New("busauth: negative user TTL")
	}
	if opts.ResolverDir != "" && (strings.ContainsAny(opts.ResolverDir, "\"\n\r") || !filepath.IsAbs(opts.ResolverDir)) {
		return nil, fmt.Errorf("busauth: resolver directory %q: want an absolute path without quotes or line breaks", opts.ResolverDir)
	}
	s := &Set{signers: map[Principal]nkeys.KeyPair{}, users: map[Principal]Credentials{}, resolverDir: opts.ResolverDir}
	var err error
	if s.operator, err = nkeys.CreateOperator(); err != nil {
		return nil, fmt.Errorf("busauth: operator key: %w", err)
	}
	if s.operatorSigner, err = nkeys.CreateOperator(); err != nil {
		return nil, fmt.Errorf("busauth: operator signing key: %w", err)
	}
	if s.revocationKey, err = nkeys.CreateOperator(); err != nil {
		return nil, fmt.Errorf("busauth: revocation key: %w", err)
	}
	if s.systemSigner, err = nkeys.CreateAccount(); err != nil {
		return nil, fmt.Errorf("busauth: system account signing key: %w", err)
	}
	sysKey, err := nkeys.CreateAccount()
	if err != nil {
		return nil, fmt.Errorf("busauth: system account key: %w", err)
	}
	vigilKey, err := nkeys.CreateAccount()
	if err != nil {
		return nil, fmt.Errorf("busauth: account key: %w", err)
	}
	// The accounts' own keys sign nothing (users are issued by scoped
	// signing keys), so they are not kept.
	sysPub, _ := sysKey.PublicKey()
	vigilPub, _ := vigilKey.PublicKey()
	sysKey.Wipe()
	vigilKey.Wipe()

	opPub, _ := s.operator.PublicKey()
	signPub, _ := s.operatorSigner.PublicKey()
	oc := jwt.NewOperatorClaims(opPub)
	oc.Name = opts.OperatorName
	revPub, _ := s.revocationKey.PublicKey()
	oc.SigningKeys.Add(signPub, revPub)
	oc.StrictSigningKeyUsage = true
	oc.SystemAccount = sysPub
	if s.operatorJWT, err = oc.Encode(s.operator); err != nil {
		return nil, fmt.Errorf("busauth: operator JWT: %w", err)
	}

	sc := jwt.NewAccountClaims(sysPub)
	sc.Name = SystemAccountName
	// A system user without permissions of its own gets none; the one
	// user is the revoker, issued by a scoped key.
	sc.DefaultPermissions.Pub.Deny.Add(">")
	sc.DefaultPermissions.Sub.Deny.Add(">")
	sc.SigningKeys.AddScopedSigner(revokerScope(s.systemSigner, vigilPub))
	s.system.claims = sc

	ac := jwt.NewAccountClaims(vigilPub)
	ac.Name = opts.AccountName
	ac.Limits.JetStreamLimits = jwt.JetStreamLimits{
		DiskStorage:   orDefault(opts.JetStreamDisk, jwt.NoLimit),
		MemoryStorage: orDefault(opts.JetStreamMemory, defaultJetStreamMemory),
		Streams:       maxStreams,
		Consumer:      maxConsumers,
	}
	ac.Limits.Conn = orDefault(opts.MaxConnections, jwt.NoLimit)
	// Every user proves its key; no bearer tokens.
	ac.Limits.DisallowBearer = true
	// A user without permissions of its own (none is issued) gets none.
	ac.DefaultPermissions.Pub.Deny.Add(">")
	ac.DefaultPermissions.Sub.Deny.Add(">")
	for _, p := range all() {
		kp, err := nkeys.CreateAccount()
		if err != nil {
			return nil, fmt.Errorf("busauth: signing key of %s: %w", p, err)
		}
		s.signers[p] = kp
		ac.SigningKeys.AddScopedSigner(scope(p, kp))
	}
	s.vigil.claims = ac
	if err := s.signAccounts(); err != nil {
		return nil, err
	}

	for _, p := range Principals() {
		name := string(p)
		if p == Admin {
			name = DefaultAdminName
		}
		c, err := s.mint(p, name, opts.UserTTL)
		if err != nil {
			return nil, err
		}
		s.users[p] = c
	}
	c, err := mint(s.systemSigner, sysPub, SysRevoker, string(SysRevoker), opts.UserTTL)
	if err != nil {
		return nil, err
	}
	s.users[SysRevoker] = c
	return s, nil
}

func orDefault(v, def int64) int64 {
	if v == 0 {
		return def
	}
	return v
}

// scope is the scoped signing key of p: its template is Permissions(p).
func scope(p Principal, kp nkeys.KeyPair) *jwt.UserScope {
	pub, _ := kp.PublicKey()
	a := Permissions(p)
	us := jwt.NewUserScope()
	us.Key = pub
	us.Role = string(p)
	us.Description = "Vigil " + string(p)
	t := &us.Template
	t.Pub.Allow.Add(a.Publish.Allow...)
	t.Pub.Deny.Add(a.Publish.Deny...)
	t.Sub.Allow.Add(a.Subscribe.Allow...)
	t.Sub.Deny.Add(a.Subscribe.Deny...)
	if a.Responses {
		t.Resp = &jwt.ResponsePermission{MaxMsgs: 1, Expires: ResponseTTL}
	}
	// TCP clients only, and clients inside the server's own process (only
	// code running in the server's process can open one: vigil dev's
	// services and simulated agents); no websocket, MQTT or leafnode
	// connections.
	t.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard, jwt.ConnectionTypeInProcess)
	if p == Agent {
		t.Subs = agentMaxSubs
		t.Payload = agentMaxPayload
	}
	return us
}

// signAccounts signs both account JWTs with the operator signing key.
func (s *Set) signAccounts() error {
	var err error
	if s.system.jwt, err = s.system.claims.Encode(s.operatorSigner); err != nil {
		return fmt.Errorf("busauth: system account JWT: %w", err)
	}
	if s.vigil.jwt, err = s.vigil.claims.Encode(s.operatorSigner); err != nil {
		return fmt.Errorf("busauth: account JWT: %w", err)
	}
	return nil
}

// mint makes a key pair and a user of p named name with it.
func (s *Set) mint(p Principal, name string, ttl time.Duration) (Credentials, error) {
	if !p.valid() {
		return Credentials{}, fmt.Errorf("busauth: unknown principal %q", p)
	}
	return mint(s.signers[p], s.vigil.claims.Subject, p, name, ttl)
}

// issue signs a user JWT for the key userPub with p's scoped signing key.
func (s *Set) issue(p Principal, name, userPub string, ttl time.Duration) (string, error) {
	if !p.valid() {
		return "", fmt.Errorf("busauth: unknown principal %q", p)
	}
	token, _, err := issueUser(s.signers[p], s.vigil.claims.Subject, p, name, userPub, ttl)
	return token, err
}

// OperatorJWT is the operator's JWT, which servers trust.
func (s *Set) OperatorJWT() string { return s.operatorJWT }

// SystemAccount is the system account's public key.
func (s *Set) SystemAccount() string { return s.system.claims.Subject }

// Account is the Vigil account's public key (its name on the server).
func (s *Set) Account() string { return s.vigil.claims.Subject }

// AccountJWT is the Vigil account's JWT as last signed (with every
// revocation so far).
func (s *Set) AccountJWT() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vigil.jwt
}

// AccountJWTs are the system and Vigil account JWTs, for a server's
// resolver.
func (s *Set) AccountJWTs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return []string{s.system.jwt, s.vigil.jwt}
}

// Creds returns the credentials Init made for p (one of Principals; for
// Admin the first administrator's).
func (s *Set) Creds(p Principal) (Credentials, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.users[p]
	if !ok {
		return Credentials{}, fmt.Errorf("busauth: no user for %q (agents: AgentCreds)", p)
	}
	return c, nil
}

// AgentCreds makes a key pair and a user JWT for the agent of the VM with
// key vm, valid for ttl (DefaultAgentTTL when 0).
func (s *Set) AgentCreds(vm string, ttl time.Duration) (Credentials, error) {
	if ttl == 0 {
		ttl = DefaultAgentTTL
	}
	return s.mint(Agent, vm, ttl)
}

// AdminCreds makes a key pair and a user JWT for the administrator named
// name, valid for ttl (0: no expiry). What the administrator publishes is
// attributed to name (AdminPolicySubject, AdminRequestSubject).
func (s *Set) AdminCreds(name string, ttl time.Duration) (Credentials, error) {
	return s.mint(Admin, name, ttl)
}

// IssueUser signs a user JWT of p named name for the public key userPub,
// whose seed stays with its holder: an agent enrolling with a key made
// inside its VM (name: the VM key), an administrator, or a service
// replica (name: the principal). ttl 0 means DefaultAgentTTL for agents
// and no expiry for the others.
func (s *Set) IssueUser(p Principal, name, userPub string, ttl time.Duration) (string, error) {
	if p == Agent && ttl == 0 {
		ttl = DefaultAgentTTL
	}
	return s.issue(p, name, userPub, ttl)
}

// Revoke revokes every user JWT of the key userPub issued until now, by
// re-signing the Vigil account JWT with the key in its revocations. The
// revocation takes effect once servers have the new AccountJWT (a
// resolver update), which closes the user's connections.
func (s *Set) Revoke(userPub string) error {
	if !nkeys.IsValidPublicUserKey(userPub) {
		return fmt.Errorf("busauth: %q is not a user public key", userPub)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.vigil.claims.Revoke(userPub)
	token, err := s.vigil.claims.Encode(s.operatorSigner)
	if err != nil {
		return fmt.Errorf("busauth: re-sign account JWT: %w", err)
	}
	s.vigil.jwt = token
	return nil
}
