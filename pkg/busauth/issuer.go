package busauth

import (
	"fmt"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"
)

// mint makes a key pair and a user of p named name with it, signed by
// signer, a scoped signing key of the account acc.
func mint(signer nkeys.KeyPair, acc string, p Principal, name string, ttl time.Duration) (Credentials, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: user key: %w", err)
	}
	defer kp.Wipe()
	pub, _ := kp.PublicKey()
	token, _, err := issueUser(signer, acc, p, name, pub, ttl)
	if err != nil {
		return Credentials{}, err
	}
	seed, err := kp.Seed()
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: user key: %w", err)
	}
	return Credentials{Principal: p, Name: name, JWT: token, Seed: string(seed), InboxPrefix: userInboxPrefix(p, name)}, nil
}

// issueUser signs a user JWT of p named name for the key userPub with
// signer, the scoped signing key of p in the account acc; ttl 0: no
// expiry. It is the one place user claims are made. expires is zero
// without expiry.
func issueUser(signer nkeys.KeyPair, acc string, p Principal, name, userPub string, ttl time.Duration) (token string, expires time.Time, err error) {
	if !p.valid() && p != SysRevoker {
		return "", time.Time{}, fmt.Errorf("busauth: unknown principal %q", p)
	}
	if signer == nil {
		return "", time.Time{}, fmt.Errorf("busauth: no signing key for %s", p)
	}
	if err := checkName(p, name); err != nil {
		return "", time.Time{}, err
	}
	if !nkeys.IsValidPublicUserKey(userPub) {
		return "", time.Time{}, fmt.Errorf("busauth: %q is not a user public key", userPub)
	}
	if ttl < 0 {
		return "", time.Time{}, fmt.Errorf("busauth: negative TTL for %s %s", p, name)
	}
	uc := jwt.NewUserClaims(userPub)
	uc.Name = name
	uc.IssuerAccount = acc
	uc.Tags.Add(principalTag + string(p))
	// Scoped users carry no permissions or limits: the key's template is
	// theirs.
	uc.SetScoped(true)
	if ttl > 0 {
		expires = time.Unix(time.Now().Add(ttl).Unix(), 0)
		uc.Expires = expires.Unix()
	}
	if token, err = uc.Encode(signer); err != nil {
		return "", time.Time{}, fmt.Errorf("busauth: sign user %s (%s): %w", name, p, err)
	}
	return token, expires, nil
}

// AgentIssuer issues agents' user JWTs, as the service that enrolls VMs
// does, holding only the agents' scoped signing key (SigningKeyFile(Agent))
// and the Vigil account's public key: it can make agents and nothing
// else. Its methods are safe for concurrent use.
type AgentIssuer struct {
	account string
	signer  nkeys.KeyPair
}

// AgentIssuer returns an issuer of agents with the set's agent signing
// key.
func (s *Set) AgentIssuer() *AgentIssuer {
	return &AgentIssuer{account: s.vigil.claims.Subject, signer: s.signers[Agent]}
}

// LoadAgentIssuer reads an issuer of agents from a directory written by
// WriteDir: the Vigil account's JWT (FileVigilAccount) and the agents'
// signing key (SigningKeyFile(Agent)), which is refused when readable by
// group or others or when it is not the account's agent signing key.
func LoadAgentIssuer(dir string) (*AgentIssuer, error) {
	token, err := readJWT(dir, FileVigilAccount)
	if err != nil {
		return nil, err
	}
	ac, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return nil, fmt.Errorf("busauth: %s: %w", FileVigilAccount, err)
	}
	kp, err := readSeed(dir, SigningKeyFile(Agent))
	if err != nil {
		return nil, err
	}
	if err := checkScopedSigner(ac, Agent, kp); err != nil {
		kp.Wipe()
		return nil, err
	}
	return &AgentIssuer{account: ac.Subject, signer: kp}, nil
}

// Account is the public key of the Vigil account, whose agents a issues.
func (a *AgentIssuer) Account() string { return a.account }

// Issue signs a user JWT for the agent of the VM with key vm whose nkey
// is userPub (made inside the VM; its seed stays there), valid for ttl
// (DefaultAgentTTL when 0). The claims are those of Set.AgentCreds and
// Set.IssueUser for agents.
func (a *AgentIssuer) Issue(vm, userPub string, ttl time.Duration) (token string, expires time.Time, err error) {
	if ttl == 0 {
		ttl = DefaultAgentTTL
	}
	return issueUser(a.signer, a.account, Agent, vm, userPub, ttl)
}
