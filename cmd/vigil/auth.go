package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/services/agent"
	"github.com/vigil-cc/vigil/services/keyguard"
)

// fileAgentTTL, in a directory written by `vigil auth init`, holds the
// default lifetime of the agent credentials `vigil auth agent` mints.
const fileAgentTTL = "agent-ttl"

// serviceCreds are the programs that connect to the bus with the
// credentials of a principal, in the order `vigil auth init` lists them.
var serviceCreds = []struct {
	program string
	p       busauth.Principal
}{
	{"vigil-ingest", busauth.Ingest},
	{"vigil-attest-worker", busauth.AttestWorker},
	{"vigil-keyguard", busauth.Keyguard},
	{"vigil-auditor", busauth.Auditor},
	{"the notifier (to come)", busauth.Notifier},
	{"the console (to come)", busauth.Console},
	{"vigil provision, policy, keyguard, events (an administrator)", busauth.Admin},
}

func newAuthCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "auth",
		Short: "Make and inspect Vigil's NATS identity (operator mode)",
		Long: `Vigil's bus runs in NATS operator mode: an operator, a system account and a Vigil
account in which every principal (each service, the readers, administrators and agents)
has a scoped signing key whose template holds its least permissions (docs/security.md,
"NATS permissions"). "vigil auth init" makes that identity in a directory; the other
commands read it. The directory holds secrets (the operator's and the signing keys, every
principal's credentials): keep it on the operator's machine, mode 0700, and hand each
service its own credentials file only.`,
	}
	cmd.AddCommand(newAuthInitCmd(), newAuthShowCmd(), newAuthAgentCmd(), newAuthAdminCmd())
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	return cmd
}

func newAuthInitCmd() *cobra.Command {
	var (
		dir, admin  string
		agentTTL    time.Duration
		force       bool
		withTLS     bool
		tlsHosts    []string
		resolverDir string
		keep        bool
		exportDir   string
	)
	cmd := &cobra.Command{
		Use:   "init --dir DIR",
		Short: "Make a new operator, accounts, signing keys and one user per principal",
		Long: `init makes Vigil's NATS identity and writes it to DIR: the operator JWT and keys, the
system and Vigil account JWTs, one scoped signing key per principal, one credentials file per
service, reader and the first administrator (secrets mode 0600 in directories of mode 0700),
and server.conf, the nats-server configuration that trusts the operator (with --resolver-dir
the full resolver, which keeps keyguard's revocations of agents on every node and across
restarts: use it in production). With --tls it also
makes a CA (ECDSA P-256) with a server certificate for --tls-host and a client certificate
per principal, in DIR/tls, for tests and compose. It refuses to
replace an existing identity unless --force is given: every credential made with the old
one stops working. With --keep an existing identity in DIR is kept and only what is missing
(the TLS files) is made, so that init can run at every start of a deployment. With --export
OUT it then copies to OUT/<name>/ only what each program needs: OUT/nats-server/ the server's
configuration and certificate, OUT/<principal>/ that principal's credentials and client
certificate (keyguard's also the agents' signing key and the revoker's files); compose mounts
one volume per program there.`,
		Example: `  vigil auth init --dir /etc/vigil/nats-auth
  vigil auth init --dir ./auth --admin alice --agent-ttl 12h --resolver-dir /data/nats/jwt
  vigil auth init --dir ./auth --tls --tls-host nats,localhost,127.0.0.1
  vigil auth init --dir /vigil-auth/identity --keep --tls --tls-host nats --resolver-dir /data/jwt --export /vigil-auth`,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError("--dir is required")
			}
			if !busauth.ValidAdminName(admin) {
				return usageError("--admin %q: 1 to 64 characters of [a-z0-9_-], starting with a letter or digit", admin)
			}
			if agentTTL <= 0 {
				return usageError("--agent-ttl %s: must be positive", agentTTL)
			}
			if withTLS && len(tlsHosts) == 0 {
				return usageError("--tls-host: give the servers' host names or addresses")
			}
			exists, err := identityExists(dir)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			if keep && force {
				return usageError("--keep and --force: choose one")
			}
			if exists && keep {
				return keepIdentity(cmd.OutOrStdout(), dir, exportDir, withTLS, tlsHosts)
			}
			if exists && !force {
				return &exitError{code: 1, msg: fmt.Sprintf("%s holds an identity already; --force replaces it (every credential made with it stops working), --keep keeps it", dir)}
			}
			set, err := busauth.Init(busauth.Options{ResolverDir: resolverDir})
			if err != nil {
				return usageError("%v", err)
			}
			if err := set.WriteDir(dir); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			if admin != busauth.DefaultAdminName {
				// The first administrator is the one named --admin: its
				// credentials take the place of those Init made.
				c, err := set.AdminCreds(admin, 0)
				if err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				if err := writeCreds(filepath.Join(dir, busauth.CredsFile(busauth.Admin)), c); err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
			}
			if err := os.WriteFile(filepath.Join(dir, fileAgentTTL), []byte(agentTTL.String()+"\n"), 0o644); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			// Read back what was written: it is what the services get.
			set, err = busauth.LoadDir(dir)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			if err := printInit(cmd.OutOrStdout(), dir, set, agentTTL); err != nil {
				return err
			}
			if withTLS {
				if err := writeTLS(dir, tlsHosts, time.Now()); err != nil {
					return &exitError{code: 1, msg: err.Error()}
				}
				printTLS(cmd.OutOrStdout(), dir)
			}
			if exportDir != "" {
				return exportOrFail(cmd.OutOrStdout(), dir, exportDir, withTLS)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", "directory to write the identity to (required; made mode 0755, secrets under it 0600)")
	f.StringVar(&admin, "admin", busauth.DefaultAdminName, "name of the first administrator (what its actions are attributed to)")
	f.DurationVar(&agentTTL, "agent-ttl", busauth.DefaultAgentTTL, `default lifetime of agent credentials ("vigil auth agent")`)
	f.BoolVar(&force, "force", false, "replace an existing identity (every credential made with it stops working)")
	f.StringVar(&resolverDir, "resolver-dir", "", "absolute directory where each nats-server keeps the account JWTs (resolver type full): keyguard's revocations of agents then hold on every node and across restarts; empty: the memory resolver")
	f.BoolVar(&keep, "keep", false, "keep an identity DIR holds already (make only the TLS files if missing) instead of refusing")
	f.StringVar(&exportDir, "export", "", "copy to OUT/nats-server/ and OUT/<principal>/ only the files each needs")
	f.BoolVar(&withTLS, "tls", false, "also make a CA, a server certificate and a client certificate per principal in DIR/tls (for tests and compose)")
	f.StringSliceVar(&tlsHosts, "tls-host", []string{"localhost", "127.0.0.1"}, "host names and IP addresses of the server certificate (repeatable)")
	return cmd
}

// usageArgs is check, whose refusal is a usage error (exit code 2).
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if err := check(cmd, args); err != nil {
			return usageError("%v", err)
		}
		return nil
	}
}

// identityExists reports whether dir holds an identity (an operator JWT)
// already.
func identityExists(dir string) (bool, error) {
	_, err := os.Lstat(filepath.Join(dir, busauth.FileOperatorJWT))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}

func printInit(w io.Writer, dir string, set *busauth.Set, agentTTL time.Duration) error {
	fmt.Fprintf(w, "Wrote Vigil's NATS identity to %s:\n", dir)
	fmt.Fprintf(w, "  %-32s operator JWT (public)\n", busauth.FileOperatorJWT)
	fmt.Fprintf(w, "  %-32s operator key (secret: keep it offline)\n", busauth.FileOperatorSeed)
	fmt.Fprintf(w, "  %-32s operator signing key (secret: signs account JWTs, revocations)\n", busauth.FileOperatorSigner)
	fmt.Fprintf(w, "  %-32s system account JWT (public)\n", busauth.FileSystemAccount)
	fmt.Fprintf(w, "  %-32s Vigil account JWT (public)\n", busauth.FileVigilAccount)
	for _, p := range append(busauth.Principals(), busauth.Agent) {
		fmt.Fprintf(w, "  %-32s scoped signing key of %s (secret)\n", busauth.SigningKeyFile(p), p)
	}
	for _, p := range busauth.Principals() {
		fmt.Fprintf(w, "  %-32s credentials of %s (secret)\n", busauth.CredsFile(p), credsOwner(set, p))
	}
	fmt.Fprintf(w, "  %-32s revocation key (secret: an operator signing key for agents' revocations; keyguard)\n", busauth.FileRevocationKey)
	fmt.Fprintf(w, "  %-32s system account signing key of the revoker user (secret)\n", busauth.FileSystemSigner)
	fmt.Fprintf(w, "  %-32s credentials of the system account's revoker user (secret; keyguard)\n", busauth.CredsFile(busauth.SysRevoker))
	fmt.Fprintf(w, "  %-32s nats-server configuration (public)\n", busauth.FileServerConfig)
	fmt.Fprintf(w, "  %-32s default lifetime of agent credentials: %s\n", fileAgentTTL, agentTTL)

	fmt.Fprintf(w, "\nInclude %s in every nats-server's configuration (include %q), or paste:\n\n",
		busauth.FileServerConfig, filepath.Join(dir, busauth.FileServerConfig))
	for _, line := range strings.Split(strings.TrimSuffix(set.ServerConfig(), "\n"), "\n") {
		fmt.Fprintf(w, "    %s\n", line)
	}

	fmt.Fprintln(w, "\nGive each service its own credentials file (-nats-creds or VIGIL_NATS_CREDS), and nothing else from this directory:")
	for _, s := range serviceCreds {
		fmt.Fprintf(w, "  %-64s %s\n", s.program, filepath.Join(dir, busauth.CredsFile(s.p)))
	}
	fmt.Fprintln(w, `
Then provision the streams and buckets as the administrator:
  vigil provision --nats-url URL --nats-creds `+filepath.Join(dir, busauth.CredsFile(busauth.Admin))+`
Agents enroll by attestation at keyguard: give vigil-keyguard -auth-dir with only `+strings.Join(busauth.KeyguardFiles(), ", ")+`
from this directory, and -enroll-http; each agent -enroll-url. "vigil auth agent VMKEY --dir `+dir+`" mints a
VM's credentials by hand instead (keyguard cannot revoke those).`)
	return nil
}

// credsOwner names the user of p's credentials file.
func credsOwner(set *busauth.Set, p busauth.Principal) string {
	if p == busauth.Admin {
		if c, err := set.Creds(p); err == nil {
			return "administrator " + c.Name
		}
	}
	return string(p)
}

func newAuthShowCmd() *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "show --dir DIR [PRINCIPAL]",
		Short: "Print the permissions of every principal (or one), the operator and account keys; no secret",
		Long: `show prints the permissions generated for each principal, as docs/security.md shows them,
the operator's and the accounts' public keys, and each principal's user key, inbox prefix and
credentials file. It prints no secret: no seed and no user JWT.`,
		Example: `  vigil auth show --dir /etc/vigil/nats-auth
  vigil auth show --dir /etc/vigil/nats-auth agent`,
		Args: usageArgs(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError("--dir is required")
			}
			principals := append(busauth.Principals(), busauth.Agent)
			if len(args) == 1 {
				p, ok := parsePrincipal(args[0])
				if !ok {
					return usageError("%q is not a principal (one of %s)", args[0], principalList())
				}
				principals = []busauth.Principal{p}
			}
			set, err := busauth.LoadDir(dir)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			return printShow(cmd.OutOrStdout(), dir, set, principals)
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", `directory written by "vigil auth init" (required)`)
	return cmd
}

func parsePrincipal(s string) (busauth.Principal, bool) {
	for _, p := range append(busauth.Principals(), busauth.Agent) {
		if string(p) == s {
			return p, true
		}
	}
	return "", false
}

func principalList() string {
	var names []string
	for _, p := range append(busauth.Principals(), busauth.Agent) {
		names = append(names, string(p))
	}
	return strings.Join(names, ", ")
}

func printShow(w io.Writer, dir string, set *busauth.Set, principals []busauth.Principal) error {
	fmt.Fprintf(w, "operator:        %s\n", set.Operator())
	fmt.Fprintf(w, "system account:  %s\n", set.SystemAccount())
	fmt.Fprintf(w, "Vigil account:   %s\n\n", set.Account())
	for _, p := range principals {
		switch p {
		case busauth.Agent:
			fmt.Fprintf(w, "%-14s inbox %s.<vm>  users minted per VM (vigil auth agent, enrollment), named by their VM key\n",
				p, strings.TrimSuffix(busauth.AgentInboxPrefix("x"), ".x"))
		default:
			c, err := set.Creds(p)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			fmt.Fprintf(w, "%-14s inbox %s  user %s (%s)  %s\n", p, c.InboxPrefix, c.PublicKey(), c.Name,
				filepath.Join(dir, busauth.CredsFile(p)))
		}
	}
	fmt.Fprintln(w)
	_, err := io.WriteString(w, permissionRows(busauth.PermissionsMarkdown(), principals))
	return err
}

// permissionRows is the permission table of busauth.PermissionsMarkdown
// with the rows of principals only (all of them when principals holds
// every principal), its header and its notes.
func permissionRows(table string, principals []busauth.Principal) string {
	want := map[string]bool{}
	for _, p := range principals {
		want["| "+string(p)+" |"] = true
	}
	var b strings.Builder
	lines := strings.SplitAfter(table, "\n")
	for i, line := range lines {
		isRow := i >= 2 && strings.HasPrefix(line, "| ")
		if isRow {
			head, _, _ := strings.Cut(line[2:], " |")
			if !want["| "+head+" |"] {
				continue
			}
		}
		b.WriteString(line)
	}
	return b.String()
}

// agentTTL resolves an agent's --ttl: the flag when given, else the
// directory's default (fileAgentTTL), else busauth.DefaultAgentTTL.
func agentTTL(dir string, flag time.Duration, given bool) (time.Duration, error) {
	if given {
		if flag <= 0 {
			return 0, usageError("--ttl %s: must be positive", flag)
		}
		return flag, nil
	}
	b, err := os.ReadFile(filepath.Join(dir, fileAgentTTL))
	if errors.Is(err, fs.ErrNotExist) {
		return busauth.DefaultAgentTTL, nil
	}
	if err != nil {
		return 0, &exitError{code: 1, msg: err.Error()}
	}
	d, err := time.ParseDuration(strings.TrimSpace(string(b)))
	if err != nil || d <= 0 {
		return 0, &exitError{code: 1, msg: fmt.Sprintf("%s: not a positive duration", filepath.Join(dir, fileAgentTTL))}
	}
	return d, nil
}

func newAuthAgentCmd() *cobra.Command {
	var (
		dir, out string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "agent VM --dir DIR",
		Short: "Mint a VM agent's credentials by hand (VM key or ARM resource ID)",
		Long: `agent mints credentials for the agent of one VM, named by its VM key (an ARM resource
ID is turned into its VM key): the agent may serve its own challenge subject, request
keyguard's nonces and releases and hear its own inbox, nothing else. They expire after
--ttl (default: the --agent-ttl given to "vigil auth init", else 24h). The file is
written with mode 0600, atomically, never through a symbolic link; give it to the agent
as -nats-creds. This is for operators who bootstrap agents by hand: agents are to enroll
by attestation.`,
		Example: `  vigil auth agent /subscriptions/.../resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-1 --dir ./auth
  vigil auth agent 4kq3x2... --dir ./auth --ttl 12h --out app-1.creds`,
		Args: usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError("--dir is required")
			}
			vm, err := keyguard.ResolveVM(args[0])
			if err != nil {
				return usageError("%v", err)
			}
			d, err := agentTTL(dir, ttl, cmd.Flags().Changed("ttl"))
			if err != nil {
				return err
			}
			path := out
			if path == "" {
				path = filepath.Join(dir, "creds", "agent-"+vm+".creds")
			}
			return mintCreds(cmd.OutOrStdout(), dir, path, d, func(set *busauth.Set) (busauth.Credentials, error) {
				return set.AgentCreds(vm, d)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", `directory written by "vigil auth init" (required)`)
	f.DurationVar(&ttl, "ttl", busauth.DefaultAgentTTL, `lifetime of the credentials (default: the directory's, from "vigil auth init --agent-ttl")`)
	f.StringVar(&out, "out", "", "credentials file to write (default DIR/creds/agent-<vmkey>.creds)")
	return cmd
}

func newAuthAdminCmd() *cobra.Command {
	var (
		dir, out string
		ttl      time.Duration
	)
	cmd := &cobra.Command{
		Use:   "admin NAME --dir DIR",
		Short: "Mint another administrator's credentials",
		Long: `admin mints credentials for an administrator named NAME: it may provision streams and
buckets, publish policy versions and use keyguard's operator API, and what it does is
attributed to NAME by the server. They do not expire unless --ttl is given. The file is
written with mode 0600, atomically; give it to the administrator's vigil as --nats-creds.`,
		Example: `  vigil auth admin alice --dir ./auth --ttl 720h`,
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dir == "" {
				return usageError("--dir is required")
			}
			name := args[0]
			if !busauth.ValidAdminName(name) {
				return usageError("%q is not an admin name (1 to 64 characters of [a-z0-9_-], starting with a letter or digit)", name)
			}
			if ttl < 0 {
				return usageError("--ttl %s: must not be negative", ttl)
			}
			path := out
			if path == "" {
				path = filepath.Join(dir, "creds", "admin-"+name+".creds")
			}
			return mintCreds(cmd.OutOrStdout(), dir, path, ttl, func(set *busauth.Set) (busauth.Credentials, error) {
				return set.AdminCreds(name, ttl)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "dir", "", `directory written by "vigil auth init" (required)`)
	f.DurationVar(&ttl, "ttl", 0, "lifetime of the credentials (0: no expiry)")
	f.StringVar(&out, "out", "", "credentials file to write (default DIR/creds/admin-<name>.creds)")
	return cmd
}

// mintCreds loads the identity in dir, mints credentials valid for ttl
// (0: no expiry) with it and writes them to path.
func mintCreds(w io.Writer, dir, path string, ttl time.Duration, mint func(*busauth.Set) (busauth.Credentials, error)) error {
	if err := agent.CheckSecretPath(path); err != nil {
		return usageError("--out: %v", err)
	}
	set, err := busauth.LoadDir(dir)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	c, err := mint(set)
	if err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	if err := writeCreds(path, c); err != nil {
		return &exitError{code: 1, msg: err.Error()}
	}
	expires := "never expires"
	if ttl > 0 {
		expires = "expires in " + ttl.String()
	}
	fmt.Fprintf(w, "wrote %s: %s %s, user %s, inbox prefix %s, %s\n", path, c.Principal, c.Name, c.PublicKey(), c.InboxPrefix, expires)
	return nil
}

// writeCreds writes c to path as a .creds file: mode 0600, atomically,
// never through a symbolic link.
func writeCreds(path string, c busauth.Credentials) error {
	b, err := c.File()
	if err != nil {
		return err
	}
	if err := agent.WriteSecretFile(path, b); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	// What was written is what a service will read: check it the same way.
	if err := keyfile.Check(path); err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	return nil
}

// Files of DIR/tls written by `vigil auth init --tls`.
const (
	dirTLS        = "tls"
	fileCACert    = "ca.pem"
	fileCAKey     = "ca-key.pem"
	fileServerPEM = "server.pem"
	fileServerKey = "server-key.pem"
	// Validity of the CA and of the certificates it signs.
	tlsCAValidity   = 5 * 365 * 24 * time.Hour
	tlsLeafValidity = 365 * 24 * time.Hour
)

// clientCertFiles are the certificate and key files of p's client
// certificate in DIR/tls.
func clientCertFiles(p busauth.Principal) (cert, key string) {
	return "client-" + string(p) + ".pem", "client-" + string(p) + "-key.pem"
}

// writeTLS makes a CA, a server certificate for hosts and a client
// certificate per principal (ECDSA P-256), and writes them to dir/tls:
// keys mode 0600, atomically; certificates 0644.
func writeTLS(dir string, hosts []string, now time.Time) error {
	d := filepath.Join(dir, dirTLS)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	if err := os.Chmod(d, 0o700); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tls: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "Vigil NATS CA", Organization: []string{"Vigil"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(tlsCAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := signCert(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("tls: CA: %w", err)
	}
	if err := writePEM(d, fileCACert, fileCAKey, caDER, caKey); err != nil {
		return err
	}
	leaf := func(cn string, usage []x509.ExtKeyUsage, certFile, keyFile string, hosts []string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("tls: key of %s: %w", cn, err)
		}
		tmpl := &x509.Certificate{
			Subject:     pkix.Name{CommonName: cn, Organization: []string{"Vigil"}},
			NotBefore:   now.Add(-time.Minute),
			NotAfter:    now.Add(tlsLeafValidity),
			KeyUsage:    x509.KeyUsageDigitalSignature,
			ExtKeyUsage: usage,
		}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
		der, err := signCert(tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		return writePEM(d, certFile, keyFile, der, key)
	}
	// The servers of a cluster present the same certificate on the routes
	// they open to each other: it is a client certificate there.
	if err := leaf("vigil-nats", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, fileServerPEM, fileServerKey, hosts); err != nil {
		return err
	}
	for _, p := range append(busauth.Principals(), busauth.Agent) {
		cert, key := clientCertFiles(p)
		if err := leaf("vigil-"+string(p), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, cert, key, nil); err != nil {
			return err
		}
	}
	return nil
}

// signCert signs tmpl (with a random serial number) with signer as parent.
func signCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("tls: serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("tls: certificate %s: %w", tmpl.Subject.CommonName, err)
	}
	return der, nil
}

// writePEM writes a certificate (0644) and its key (PKCS#8, 0600,
// atomically) to dir.
func writePEM(dir, certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("tls: key %s: %w", keyFile, err)
	}
	if err := agent.WriteSecretFile(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk})); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	return nil
}

func printTLS(w io.Writer, dir string) {
	d := filepath.Join(dir, dirTLS)
	fmt.Fprintf(w, "\nTLS (for tests and compose): a CA, a server certificate and a client certificate per principal in %s.\nAdd to the nats-server configuration:\n\n", d)
	fmt.Fprintf(w, "    tls {\n      cert_file: %q\n      key_file: %q\n      ca_file: %q\n    }\n\n",
		filepath.Join(d, fileServerPEM), filepath.Join(d, fileServerKey), filepath.Join(d, fileCACert))
	fmt.Fprintln(w, "and give each service -nats-ca/-nats-cert/-nats-key (VIGIL_NATS_CA/CERT/KEY):")
	for _, s := range serviceCreds {
		cert, key := clientCertFiles(s.p)
		fmt.Fprintf(w, "  %-64s %s %s %s\n", s.program, filepath.Join(d, fileCACert), filepath.Join(d, cert), filepath.Join(d, key))
	}
	cert, key := clientCertFiles(busauth.Agent)
	fmt.Fprintf(w, "  %-64s %s %s %s\n", "agents", filepath.Join(d, fileCACert), filepath.Join(d, cert), filepath.Join(d, key))
}
