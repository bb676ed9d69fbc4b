package busauth

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// Credentials are one bus user's: its JWT, the seed of its nkey (a
// secret: it proves the user is who the JWT names) and the inbox prefix
// its connections must use. They print without the seed.
type Credentials struct {
	Principal   Principal
	Name        string
	JWT         string
	Seed        string
	InboxPrefix string
}

// principalTag tags every user JWT with its principal, from which
// ParseCreds learns the inbox prefix.
const principalTag = "vigil-principal:"

// PublicKey is the user's public nkey (the JWT's subject): what Revoke
// takes.
func (c Credentials) PublicKey() string {
	uc, err := jwt.DecodeUserClaims(c.JWT)
	if err != nil {
		return ""
	}
	return uc.Subject
}

// File returns the credentials in the .creds format of nats.UserCredentials
// and nats-server tools. Write it with mode 0600.
func (c Credentials) File() ([]byte, error) {
	if c.JWT == "" || c.Seed == "" {
		return nil, errors.New("busauth: credentials without JWT or seed")
	}
	b, err := jwt.FormatUserConfig(c.JWT, []byte(c.Seed))
	if err != nil {
		return nil, fmt.Errorf("busauth: format credentials of %s: %w", c.Name, err)
	}
	return b, nil
}

// String describes the credentials without their seed.
func (c Credentials) String() string {
	return fmt.Sprintf("busauth.Credentials{Principal: %s, Name: %s, Key: %s, InboxPrefix: %s}", c.Principal, c.Name, c.PublicKey(), c.InboxPrefix)
}

// GoString is String, so that %#v does not print the seed either.
func (c Credentials) GoString() string { return c.String() }

// LogValue logs the credentials without their seed.
func (c Credentials) LogValue() slog.Value {
	return slog.GroupValue(slog.String("principal", string(c.Principal)), slog.String("name", c.Name),
		slog.String("key", c.PublicKey()), slog.String("inbox_prefix", c.InboxPrefix))
}

// ParseCreds reads credentials in the .creds format. The principal and
// the inbox prefix come from the JWT (its name and principal tag).
func ParseCreds(b []byte) (Credentials, error) {
	token, err := jwt.ParseDecoratedJWT(b)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: credentials: %w", err)
	}
	kp, err := jwt.ParseDecoratedUserNKey(b)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: credentials: nkey: %w", err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: credentials: nkey: %w", err)
	}
	return newCredentials(token, seed)
}

// ReadCreds reads a .creds file, refusing one that users other than its
// owner may access.
func ReadCreds(path string) (Credentials, error) {
	b, err := keyfile.Read(path, 0)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: %w", err)
	}
	c, err := ParseCreds(b)
	if err != nil {
		return Credentials{}, fmt.Errorf("%w (%s)", err, path)
	}
	return c, nil
}

// newCredentials checks that seed is the key token names and fills in
// what the token says.
func newCredentials(token string, seed []byte) (Credentials, error) {
	uc, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: credentials: %w", err)
	}
	kp, err := nkeys.FromSeed(seed)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: credentials: nkey: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil || pub != uc.Subject {
		return Credentials{}, errors.New("busauth: credentials: the seed is not the key the JWT names")
	}
	c := Credentials{Name: uc.Name, JWT: token, Seed: string(seed)}
	for _, t := range uc.Tags {
		if p, ok := strings.CutPrefix(t, principalTag); ok {
			c.Principal = Principal(p)
		}
	}
	if c.Principal.valid() || c.Principal == SysRevoker {
		c.InboxPrefix = userInboxPrefix(c.Principal, c.Name)
	}
	return c, nil
}
