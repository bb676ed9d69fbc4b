package busauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// SysRevoker is the revoker user of the system account: not a principal
// of the Vigil account (it is not among Principals and has no signing key
// there) but the user Revoker.Push connects as. Its scoped signing key in
// the system account lets it publish the Vigil account's claim updates
// ($SYS.REQ.ACCOUNT.<account>.CLAIMS.UPDATE) and subscribe to its inbox,
// _INBOX_revoker.>, and nothing else.
const SysRevoker Principal = "revoker"

// ClaimsUpdateSubject is where a system account user asks the servers to
// take a new JWT of the account acc (a public key).
func ClaimsUpdateSubject(acc string) string { return "$SYS.REQ.ACCOUNT." + acc + ".CLAIMS.UPDATE" }

// revokerScope is the system account's scoped signing key kp of the
// revoker user, for the Vigil account vigil.
func revokerScope(kp nkeys.KeyPair, vigil string) *jwt.UserScope {
	pub, _ := kp.PublicKey()
	us := jwt.NewUserScope()
	us.Key = pub
	us.Role = string(SysRevoker)
	us.Description = "Vigil revoker: pushes the Vigil account's revocations"
	t := &us.Template
	t.Pub.Allow.Add(ClaimsUpdateSubject(vigil))
	t.Sub.Allow.Add(InboxPrefix(SysRevoker) + ".>")
	t.AllowedConnectionTypes.Add(jwt.ConnectionTypeStandard, jwt.ConnectionTypeInProcess)
	return us
}

// Revoker revokes users of the Vigil account without the rest of the
// identity: it holds a revocation key (an operator signing key used only
// for this, FileRevocationKey), the Vigil account's claims as they were
// when it was made (its base), and the credentials of the system
// account's revoker user (SysRevoker), whose connection pushes the
// account JWTs it signs. Its methods are safe for concurrent use.
//
// A pushed account JWT replaces the account's claims on every server that
// has the account loaded: the base, with the revocations given. The base
// must therefore be the account as it stands (a Revoker made before the
// account changed would push the change away), and a server that loads
// the account afterwards from its own resolver (after a restart, or a
// memory resolver's server that had not loaded it) has the revocations
// only when its resolver has them: push again when a server (re)starts,
// or use a full resolver, which stores pushed updates.
type Revoker struct {
	key     nkeys.KeyPair
	account string // the Vigil account's public key
	base    string // the Vigil account's JWT
	creds   Credentials

	// issued is the iat of the last account JWT Push signed (or the
	// base's); pushMu orders the pushes.
	pushMu sync.Mutex
	issued int64
}

// Revoker returns a revoker with the set's revocation key, the Vigil
// account as it stands (with the revocations of Revoke) and the revoker
// user's credentials.
func (s *Set) Revoker() (*Revoker, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.users[SysRevoker]
	if !ok || s.revocationKey == nil {
		return nil, fmt.Errorf("%w: the identity has no revocation key or revoker user; make it again", ErrInconsistent)
	}
	return &Revoker{key: s.revocationKey, account: s.vigil.claims.Subject, base: s.vigil.jwt, creds: c, issued: s.vigil.claims.IssuedAt}, nil
}

// LoadRevoker reads a revoker from a directory written by WriteDir: the
// operator's JWT, the account JWTs, the revocation key (FileRevocationKey)
// and the revoker user's credentials (CredsFile(SysRevoker)). Secrets
// readable by group or others are refused, and so are files that do not
// belong together.
func LoadRevoker(dir string) (*Revoker, error) {
	// The system account's signing key is not needed here: a service that
	// revokes holds the revocation key and the revoker's credentials only.
	if err := checkCurrent(dir, FileRevocationKey, CredsFile(SysRevoker)); err != nil {
		return nil, err
	}
	token, err := readJWT(dir, FileOperatorJWT)
	if err != nil {
		return nil, err
	}
	oc, err := jwt.DecodeOperatorClaims(token)
	if err != nil {
		return nil, fmt.Errorf("busauth: %s: %w", FileOperatorJWT, err)
	}
	sys, err := loadAccount(dir, FileSystemAccount, oc)
	if err != nil {
		return nil, err
	}
	if sys.claims.Subject != oc.SystemAccount {
		return nil, fmt.Errorf("%w: %s is not the operator's system account", ErrInconsistent, FileSystemAccount)
	}
	vigil, err := loadAccount(dir, FileVigilAccount, oc)
	if err != nil {
		return nil, err
	}
	c, err := readRevokerCreds(dir, sys.claims)
	if err != nil {
		return nil, err
	}
	kp, err := readRevocationKey(dir, oc)
	if err != nil {
		return nil, err
	}
	return &Revoker{key: kp, account: vigil.claims.Subject, base: vigil.jwt, creds: c, issued: vigil.claims.IssuedAt}, nil
}

// Creds are the revoker user's credentials (a user of the system account,
// with inbox prefix _INBOX_revoker): connect with them to Push.
func (r *Revoker) Creds() Credentials { return r.creds }

// Account is the public key of the Vigil account whose users r revokes.
func (r *Revoker) Account() string { return r.account }

// AccountJWT signs, with the revocation key, the Vigil account's base
// claims with these revocations added: each user public key's JWTs
// issued at or before its time (to the second; the server compares the
// JWT's iat) are revoked, and a JWT of the same key issued later is not.
// The base's own revocations (Set.Revoke) are kept; for a key in both,
// the later time wins. Nothing else changes.
func (r *Revoker) AccountJWT(revoked map[string]time.Time) (string, error) {
	token, _, err := r.accountJWT(revoked)
	return token, err
}

// accountJWT is AccountJWT with the JWT's iat.
func (r *Revoker) accountJWT(revoked map[string]time.Time) (string, int64, error) {
	ac, err := jwt.DecodeAccountClaims(r.base)
	if err != nil {
		return "", 0, fmt.Errorf("busauth: account JWT: %w", err)
	}
	for _, pub := range slices.Sorted(maps.Keys(revoked)) {
		if !nkeys.IsValidPublicUserKey(pub) {
			return "", 0, fmt.Errorf("busauth: %q is not a user public key", pub)
		}
		at := revoked[pub]
		if at.IsZero() {
			return "", 0, fmt.Errorf("busauth: revocation of %s without a time", pub)
		}
		ac.RevokeAt(pub, at) // keeps a later revocation of the base
	}
	token, err := ac.Encode(r.key)
	if err != nil {
		return "", 0, fmt.Errorf("busauth: sign account JWT: %w", err)
	}
	return token, ac.IssuedAt, nil
}

// ErrPushRefused is matched by errors.Is when a server refuses an
// account update Push sent.
var ErrPushRefused = errors.New("busauth: account update refused")

// claimsUpdateAnswer is a server's answer to a claims update
// (server.ServerAPIClaimUpdateResponse).
type claimsUpdateAnswer struct {
	Data *struct {
		Account string `json:"account"`
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"data"`
	Error *struct {
		Account     string `json:"account"`
		Code        int    `json:"code"`
		Description string `json:"description"`
	} `json:"error"`
}

// Push signs AccountJWT(revoked) and asks the servers over nc, a
// connection of the revoker user (Creds, with its inbox prefix), to take
// it; each server that has the account loaded applies it at once, which
// closes the revoked users' connections. In a cluster every server gets
// the request; Push returns with the first answer. It fails with
// ErrPushRefused when that server refuses the JWT, and with an error
// when no server answers before ctx ends (nc is not the revoker's, or
// the server does not run in operator mode).
//
// JWT times are seconds, and a full resolver keeps, of two JWTs of one
// account issued in the same second, whichever it saw last (a cluster's
// nodes exchange theirs, in no set order): a node could go back to the
// earlier list and let a revoked user in again. The pushes of one Revoker
// go one at a time; one signed in the same second as the push before it
// (or as the base account) is sent at once all the same, so that the
// revocation takes effect in milliseconds, and Push returns when the
// caller must push again, the whole list as it is then: that push is
// signed in a later second, which every server keeps over both. again
// is zero when the push had its second to itself.
func (r *Revoker) Push(ctx context.Context, nc *nats.Conn, revoked map[string]time.Time) (again time.Time, err error) {
	r.pushMu.Lock()
	defer r.pushMu.Unlock()
	token, iat, err := r.accountJWT(revoked)
	if err != nil {
		return time.Time{}, err
	}
	// Whether or not a server takes it, a later push must tell it apart.
	shared := iat <= r.issued
	r.issued = max(r.issued, iat)
	if shared {
		again = time.Unix(r.issued+1, 0)
	}
	subject := ClaimsUpdateSubject(r.account)
	m, err := nc.RequestWithContext(ctx, subject, []byte(token))
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return time.Time{}, fmt.Errorf("busauth: push account update: no server answers %s (is the connection the revoker user of the system account?): %w", subject, err)
		}
		return time.Time{}, fmt.Errorf("busauth: push account update: no answer on %s: %w", subject, err)
	}
	var a claimsUpdateAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return time.Time{}, fmt.Errorf("busauth: push account update: unreadable answer: %w", err)
	}
	switch {
	case a.Error != nil:
		return time.Time{}, fmt.Errorf("%w: %s (code %d)", ErrPushRefused, a.Error.Description, a.Error.Code)
	case a.Data == nil || a.Data.Code != http.StatusOK:
		return time.Time{}, fmt.Errorf("%w: unexpected answer %q", ErrPushRefused, m.Data)
	}
	return again, nil
}
