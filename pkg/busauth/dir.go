package busauth

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// Files of a directory written by WriteDir. Seeds and credentials are
// mode 0600 in directories of mode 0700; JWTs and the server
// configuration, which hold no secret, are 0644.
const (
	FileOperatorJWT    = "operator.jwt"
	FileOperatorSeed   = "operator.nk"         // the operator's own key: keep it offline
	FileOperatorSigner = "operator-signing.nk" // signs account JWTs (Revoke)
	FileRevocationKey  = "revoker.nk"          // operator signing key of Revoker: revocation updates only
	FileSystemSigner   = "signing/system.nk"   // the system account's scoped signing key of the revoker user
	FileSystemAccount  = "accounts/system.jwt"
	FileVigilAccount   = "accounts/vigil.jwt"
	FileServerConfig   = "server.conf"
	FileResolverDir    = "resolver-dir" // Options.ResolverDir, when set
	dirSigning         = "signing"      // <principal>.nk: the scoped signing keys
	dirCreds           = "creds"        // <principal>.creds
)

// SigningKeyFile is the file of p's scoped signing key in a directory
// written by WriteDir.
func SigningKeyFile(p Principal) string { return filepath.Join(dirSigning, string(p)+".nk") }

// CredsFile is the file of p's credentials (for Admin the first
// administrator's) in a directory written by WriteDir.
func CredsFile(p Principal) string { return filepath.Join(dirCreds, string(p)+".creds") }

// ServerConfig is a nats-server configuration snippet that trusts the
// operator and serves the accounts, preloaded, from the full resolver in
// Options.ResolverDir (which stores the account updates keyguard pushes
// with its revocations) or, without one, from memory (a revocation then
// holds while the server has the account loaded; keyguard pushes again
// at every reconciliation).
func (s *Set) ServerConfig() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "# Vigil's NATS identity (pkg/busauth): operator mode.\n")
	fmt.Fprintf(&b, "operator: %s\n", s.operatorJWT)
	fmt.Fprintf(&b, "system_account: %s\n", s.system.claims.Subject)
	if s.resolverDir != "" {
		fmt.Fprintf(&b, "resolver: {\n  type: full\n  dir: %q\n  allow_delete: false\n  interval: \"2m\"\n}\n", s.resolverDir)
	} else {
		b.WriteString("resolver: MEMORY\n")
	}
	b.WriteString("resolver_preload: {\n")
	fmt.Fprintf(&b, "  # %s\n  %s: %s\n", s.system.claims.Name, s.system.claims.Subject, s.system.jwt)
	fmt.Fprintf(&b, "  # %s\n  %s: %s\n", s.vigil.claims.Name, s.vigil.claims.Subject, s.vigil.jwt)
	b.WriteString("}\n")
	return b.String()
}

// WriteDir writes the set to dir (made if missing): JWTs, seeds,
// credentials and ServerConfig. Each file is replaced atomically, so that
// writing again after Revoke never leaves a half-written account.
func (s *Set) WriteDir(dir string) error {
	for _, d := range []string{dir, filepath.Join(dir, "accounts"), filepath.Join(dir, dirSigning), filepath.Join(dir, dirCreds)} {
		mode := os.FileMode(0o755)
		if d != dir && d != filepath.Join(dir, "accounts") {
			mode = 0o700
		}
		if err := os.MkdirAll(d, mode); err != nil {
			return fmt.Errorf("busauth: %w", err)
		}
		if err := os.Chmod(d, mode); err != nil {
			return fmt.Errorf("busauth: %w", err)
		}
	}
	conf := s.ServerConfig()
	s.mu.Lock()
	files := map[string][]byte{
		FileOperatorJWT:   []byte(s.operatorJWT + "\n"),
		FileSystemAccount: []byte(s.system.jwt + "\n"),
		FileVigilAccount:  []byte(s.vigil.jwt + "\n"),
		FileServerConfig:  []byte(conf),
	}
	if s.resolverDir != "" {
		files[FileResolverDir] = []byte(s.resolverDir + "\n")
	}
	secrets := map[string][]byte{}
	var err error
	if secrets[FileOperatorSeed], err = s.operator.Seed(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("busauth: operator seed: %w", err)
	}
	if secrets[FileOperatorSigner], err = s.operatorSigner.Seed(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("busauth: operator signing seed: %w", err)
	}
	if secrets[FileRevocationKey], err = s.revocationKey.Seed(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("busauth: revocation seed: %w", err)
	}
	if secrets[FileSystemSigner], err = s.systemSigner.Seed(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("busauth: system signing seed: %w", err)
	}
	for p, kp := range s.signers {
		if secrets[SigningKeyFile(p)], err = kp.Seed(); err != nil {
			s.mu.Unlock()
			return fmt.Errorf("busauth: signing seed of %s: %w", p, err)
		}
	}
	for p, c := range s.users {
		if secrets[CredsFile(p)], err = c.File(); err != nil {
			s.mu.Unlock()
			return err
		}
	}
	s.mu.Unlock()
	for name, b := range secrets {
		if err := writeFile(filepath.Join(dir, name), b, 0o600); err != nil {
			return err
		}
	}
	for name, b := range files {
		if err := writeFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeFile replaces path with b atomically: a temporary file of mode
// perm in the same directory, synced and renamed.
func writeFile(path string, b []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("busauth: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return fmt.Errorf("busauth: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("busauth: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("busauth: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("busauth: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("busauth: %w", err)
	}
	return nil
}

// ErrInconsistent is matched by errors.Is when a directory's files do not
// belong together (a key that is not the one a JWT names, a JWT another
// key signed).
var ErrInconsistent = errors.New("busauth: inconsistent identity")

// LoadDir reads a set written by WriteDir. Seeds and credentials readable
// by other users are refused, and so is a set whose files do not belong
// together.
func LoadDir(dir string) (*Set, error) {
	s := &Set{signers: map[Principal]nkeys.KeyPair{}, users: map[Principal]Credentials{}}
	var err error
	if err := checkCurrent(dir); err != nil {
		return nil, err
	}
	switch b, err := os.ReadFile(filepath.Join(dir, FileResolverDir)); {
	case err == nil:
		s.resolverDir = strings.TrimSpace(string(b))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("busauth: %w", err)
	}
	if s.operatorJWT, err = readJWT(dir, FileOperatorJWT); err != nil {
		return nil, err
	}
	oc, err := jwt.DecodeOperatorClaims(s.operatorJWT)
	if err != nil {
		return nil, fmt.Errorf("busauth: %s: %w", FileOperatorJWT, err)
	}
	if s.operator, err = readSeed(dir, FileOperatorSeed); err != nil {
		return nil, err
	}
	if s.operatorSigner, err = readSeed(dir, FileOperatorSigner); err != nil {
		return nil, err
	}
	if pub, _ := s.operator.PublicKey(); pub != oc.Subject {
		return nil, fmt.Errorf("%w: %s is not the operator's key", ErrInconsistent, FileOperatorSeed)
	}
	if pub, _ := s.operatorSigner.PublicKey(); !oc.SigningKeys.Contains(pub) {
		return nil, fmt.Errorf("%w: %s is not an operator signing key", ErrInconsistent, FileOperatorSigner)
	}
	if s.revocationKey, err = readRevocationKey(dir, oc); err != nil {
		return nil, err
	}
	if s.system, err = loadAccount(dir, FileSystemAccount, oc); err != nil {
		return nil, err
	}
	if s.vigil, err = loadAccount(dir, FileVigilAccount, oc); err != nil {
		return nil, err
	}
	if s.system.claims.Subject != oc.SystemAccount {
		return nil, fmt.Errorf("%w: %s is not the operator's system account", ErrInconsistent, FileSystemAccount)
	}
	if s.systemSigner, err = readSeed(dir, FileSystemSigner); err != nil {
		return nil, err
	}
	if err := checkScopedSigner(s.system.claims, SysRevoker, s.systemSigner); err != nil {
		return nil, err
	}
	for _, p := range all() {
		kp, err := readSeed(dir, SigningKeyFile(p))
		if err != nil {
			return nil, err
		}
		if err := checkScopedSigner(s.vigil.claims, p, kp); err != nil {
			return nil, err
		}
		s.signers[p] = kp
	}
	rc, err := readRevokerCreds(dir, s.system.claims)
	if err != nil {
		return nil, err
	}
	s.users[SysRevoker] = rc
	for _, p := range Principals() {
		c, err := ReadCreds(filepath.Join(dir, CredsFile(p)))
		if err != nil {
			return nil, err
		}
		uc, _ := jwt.DecodeUserClaims(c.JWT)
		if pub, _ := s.signers[p].PublicKey(); uc.Issuer != pub || c.Principal != p {
			return nil, fmt.Errorf("%w: %s is not a %s user of this account", ErrInconsistent, CredsFile(p), p)
		}
		s.users[p] = c
	}
	return s, nil
}

// readJWT reads the JWT in the file name of dir.
func readJWT(dir, name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		return "", fmt.Errorf("busauth: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// readSeed reads the seed in the file name of dir, refusing a file that
// users other than its owner may access.
func readSeed(dir, name string) (nkeys.KeyPair, error) {
	b, err := keyfile.Read(filepath.Join(dir, name), 0)
	if err != nil {
		return nil, fmt.Errorf("busauth: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
	if err != nil {
		return nil, fmt.Errorf("busauth: %s: %w", name, err)
	}
	return kp, nil
}

// loadAccount reads the account JWT in the file name of dir, which the
// operator oc must have signed.
func loadAccount(dir, name string, oc *jwt.OperatorClaims) (account, error) {
	token, err := readJWT(dir, name)
	if err != nil {
		return account{}, err
	}
	ac, err := jwt.DecodeAccountClaims(token)
	if err != nil {
		return account{}, fmt.Errorf("busauth: %s: %w", name, err)
	}
	if !oc.DidSign(ac) {
		return account{}, fmt.Errorf("%w: %s is not signed by the operator", ErrInconsistent, name)
	}
	return account{claims: ac, jwt: token}, nil
}

// checkScopedSigner checks that kp is the scoped signing key of p in the
// account ac.
func checkScopedSigner(ac *jwt.AccountClaims, p Principal, kp nkeys.KeyPair) error {
	file := SigningKeyFile(p)
	if p == SysRevoker {
		file = FileSystemSigner
	}
	pub, _ := kp.PublicKey()
	sc, ok := ac.SigningKeys.GetScope(pub)
	if us, isUser := sc.(*jwt.UserScope); !ok || !isUser || us.Role != string(p) {
		return fmt.Errorf("%w: %s is not the scoped signing key of %s in account %s", ErrInconsistent, file, p, ac.Name)
	}
	return nil
}

// readRevocationKey reads FileRevocationKey, which must be a signing key
// of the operator oc.
func readRevocationKey(dir string, oc *jwt.OperatorClaims) (nkeys.KeyPair, error) {
	kp, err := readSeed(dir, FileRevocationKey)
	if err != nil {
		return nil, err
	}
	if pub, _ := kp.PublicKey(); !oc.SigningKeys.Contains(pub) || pub == oc.Subject {
		kp.Wipe()
		return nil, fmt.Errorf("%w: %s is not an operator signing key", ErrInconsistent, FileRevocationKey)
	}
	return kp, nil
}

// readRevokerCreds reads the revoker user's credentials, which the
// revoker's signing key of the system account sc must have issued.
func readRevokerCreds(dir string, sc *jwt.AccountClaims) (Credentials, error) {
	name := CredsFile(SysRevoker)
	c, err := ReadCreds(filepath.Join(dir, name))
	if err != nil {
		return Credentials{}, err
	}
	uc, err := jwt.DecodeUserClaims(c.JWT)
	if err != nil {
		return Credentials{}, fmt.Errorf("busauth: %s: %w", name, err)
	}
	scope, ok := sc.SigningKeys.GetScope(uc.Issuer)
	if us, isUser := scope.(*jwt.UserScope); !ok || !isUser || us.Role != string(SysRevoker) ||
		uc.IssuerAccount != sc.Subject || c.Principal != SysRevoker {
		return Credentials{}, fmt.Errorf("%w: %s is not the revoker user of the system account", ErrInconsistent, name)
	}
	return c, nil
}

// KeyguardFiles are the files of a directory written by WriteDir that
// the service enrolling and revoking agents needs (LoadAgentIssuer,
// LoadRevoker), and the only ones to give it.
func KeyguardFiles() []string {
	return []string{FileOperatorJWT, FileSystemAccount, FileVigilAccount,
		SigningKeyFile(Agent), FileRevocationKey, CredsFile(SysRevoker)}
}

// checkCurrent refuses a directory written before revocation keys and
// the revoker user were part of the identity, saying so: it must hold
// names (default: every file they added).
func checkCurrent(dir string, names ...string) error {
	if _, err := os.Stat(filepath.Join(dir, FileOperatorJWT)); err != nil {
		return fmt.Errorf("busauth: %w", err)
	}
	if len(names) == 0 {
		names = []string{FileRevocationKey, FileSystemSigner, CredsFile(SysRevoker)}
	}
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: %s has no %s: the identity was made before revocation keys and the revoker user; make it again", ErrInconsistent, dir, name)
		}
	}
	return nil
}
