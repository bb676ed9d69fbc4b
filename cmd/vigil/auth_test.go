package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// authInit runs `vigil auth init` into a new directory and returns it.
func authInit(t *testing.T, args ...string) (dir, out string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "auth")
	out, _, err := runVigil(context.Background(), append([]string{"auth", "init", "--dir", dir}, args...)...)
	if err != nil {
		t.Fatalf("auth init: %v", err)
	}
	return dir, out
}

// startFromDir starts an operator-mode server trusting the identity in dir.
func startFromDir(t *testing.T, dir string) *natstest.Server {
	t.Helper()
	set, err := busauth.LoadDir(dir)
	if err != nil {
		t.Fatalf("the written identity does not load: %v", err)
	}
	return natstest.StartOperator(t, set)
}

// connectCredsFile connects to srv as a service does: with the credentials
// file and the inbox prefix of its user.
func connectCredsFile(t *testing.T, srv *natstest.Server, path string) *bus.Conn {
	t.Helper()
	c, err := busauth.ReadCreds(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := bus.Connect(ctx, bus.Config{URL: srv.URL(), Name: c.Name, CredsFile: path, InboxPrefix: c.InboxPrefix})
	if err != nil {
		t.Fatalf("connect with %s: %v", path, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func mustMode0600(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %04o, want 0600", path, fi.Mode().Perm())
	}
}

// TestAuthInitWritesAUsableIdentity: a server configured from the written
// directory accepts every principal's credentials file, each with its own
// inbox prefix; every secret is mode 0600; the output names the server
// configuration and each service's credentials.
func TestAuthInitWritesAUsableIdentity(t *testing.T) {
	jwtDir := filepath.Join(t.TempDir(), "jwt")
	dir, out := authInit(t, "--admin", "alice", "--agent-ttl", "2h", "--resolver-dir", jwtDir)
	srv := startFromDir(t, dir)
	set := srv.Auth()

	for _, want := range []string{"operator: ", "system_account: " + set.SystemAccount(), "type: full", fmt.Sprintf("dir: %q", jwtDir),
		filepath.Join(dir, busauth.FileServerConfig), "VIGIL_NATS_CREDS", "vigil provision"} {
		if !strings.Contains(out, want) {
			t.Errorf("init output lacks %q:\n%s", want, out)
		}
	}
	for _, name := range []string{busauth.FileOperatorSeed, busauth.FileOperatorSigner} {
		mustMode0600(t, filepath.Join(dir, name))
	}
	for _, p := range append(busauth.Principals(), busauth.Agent) {
		mustMode0600(t, filepath.Join(dir, busauth.SigningKeyFile(p)))
	}

	tests := []struct {
		p          busauth.Principal
		name       string
		inbox      string
		programHas string
	}{
		{busauth.Ingest, "ingest", "_INBOX_ingest", "vigil-ingest"},
		{busauth.AttestWorker, "attest-worker", "_INBOX_attest-worker", "vigil-attest-worker"},
		{busauth.Keyguard, "keyguard", "_INBOX_keyguard", "vigil-keyguard"},
		{busauth.Auditor, "auditor", "_INBOX_auditor", "vigil-auditor"},
		{busauth.Notifier, "notifier", "_INBOX_notifier", "notifier"},
		{busauth.Console, "console", "_INBOX_console", "console"},
		{busauth.Admin, "alice", "_INBOX_admin.alice", "vigil provision"},
	}
	if len(tests) != len(busauth.Principals()) {
		t.Fatalf("the test covers %d principals, Init makes %d", len(tests), len(busauth.Principals()))
	}
	for _, tc := range tests {
		t.Run(string(tc.p), func(t *testing.T) {
			path := filepath.Join(dir, busauth.CredsFile(tc.p))
			mustMode0600(t, path)
			if !strings.Contains(out, path) {
				t.Errorf("init output does not name %s", path)
			}
			c, err := busauth.ReadCreds(path)
			if err != nil {
				t.Fatal(err)
			}
			if c.Principal != tc.p || c.Name != tc.name || c.InboxPrefix != tc.inbox {
				t.Errorf("credentials of %s: %v, want name %s, inbox %s", tc.p, c, tc.name, tc.inbox)
			}
			conn := connectCredsFile(t, srv, path)
			// A request round trip through the principal's own inbox: the
			// server accepted the user and its prefix is the one it may hear.
			if _, err := conn.JS.AccountInfo(context.Background()); err != nil {
				t.Errorf("%s: JetStream account info: %v", tc.p, err)
			}
		})
	}
	if b, err := os.ReadFile(filepath.Join(dir, fileAgentTTL)); err != nil || strings.TrimSpace(string(b)) != "2h0m0s" {
		t.Errorf("agent TTL file: %q %v", b, err)
	}
}

// TestAuthInitRefusesToOverwrite: an existing identity is replaced only
// with --force; bad flags are usage errors (exit 2).
func TestAuthInitRefusesToOverwrite(t *testing.T) {
	dir, _ := authInit(t)
	opJWT := func() string {
		b, err := os.ReadFile(filepath.Join(dir, busauth.FileOperatorJWT))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	first := opJWT()
	tests := []struct {
		name     string
		args     []string
		code     int
		replaced bool
	}{
		{"again", nil, 1, false},
		{"bad admin name", []string{"--admin", "Alice!"}, 2, false},
		{"bad agent TTL", []string{"--agent-ttl", "0s"}, 2, false},
		{"unknown flag", []string{"--frobnicate"}, 2, false},
		{"forced", []string{"--force"}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := opJWT()
			_, _, err := runVigil(context.Background(), append([]string{"auth", "init", "--dir", dir}, tc.args...)...)
			if got := exitCode(err); got != tc.code {
				t.Fatalf("exit code %d (%v), want %d", got, err, tc.code)
			}
			if replaced := opJWT() != before; replaced != tc.replaced {
				t.Fatalf("identity replaced: %v, want %v", replaced, tc.replaced)
			}
		})
	}
	if opJWT() == first {
		t.Fatal("--force kept the old operator")
	}
	if _, _, err := runVigil(context.Background(), "auth", "init"); exitCode(err) != 2 {
		t.Fatalf("init without --dir: %v", err)
	}
}

// seedPattern matches an nkey seed of any kind (S then the key type: U
// user, A account, O operator, ...), and jwtPattern a JWT.
var (
	seedPattern = regexp.MustCompile(`\bS[UAOCNPX][A-Z2-7]{56}\b`)
	jwtPattern  = regexp.MustCompile(`eyJ[A-Za-z0-9_-]{10,}`)
)

// TestAuthShowPrintsNoSecret: show prints the permission table (all rows
// or one), the operator's and the accounts' keys and the inbox prefixes,
// and no seed and no JWT.
func TestAuthShowPrintsNoSecret(t *testing.T) {
	dir, _ := authInit(t)
	set, err := busauth.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var secrets []string
	for _, p := range busauth.Principals() {
		c, err := set.Creds(p)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, c.Seed, c.JWT)
	}
	header := strings.SplitN(busauth.PermissionsMarkdown(), "\n", 2)[0]
	tests := []struct {
		name string
		args []string
		rows []busauth.Principal
	}{
		{"every principal", nil, append(busauth.Principals(), busauth.Agent)},
		{"agent", []string{"agent"}, []busauth.Principal{busauth.Agent}},
		{"keyguard", []string{"keyguard"}, []busauth.Principal{busauth.Keyguard}},
		{"admin", []string{"admin"}, []busauth.Principal{busauth.Admin}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := runVigil(context.Background(), append([]string{"auth", "show", "--dir", dir}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if m := seedPattern.FindString(out); m != "" {
				t.Fatalf("show prints a seed (%.4s...)", m)
			}
			if m := jwtPattern.FindString(out); m != "" {
				t.Fatalf("show prints a JWT (%.8s...)", m)
			}
			for _, s := range secrets {
				if strings.Contains(out, s) {
					t.Fatal("show prints a user's seed or JWT")
				}
			}
			for _, want := range []string{set.Operator(), set.SystemAccount(), set.Account(), header} {
				if !strings.Contains(out, want) {
					t.Errorf("show lacks %q", want)
				}
			}
			rows := 0
			for _, line := range strings.Split(out, "\n") {
				if strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, header) {
					rows++
				}
			}
			if rows != len(tc.rows) {
				t.Errorf("%d table rows, want %d:\n%s", rows, len(tc.rows), out)
			}
			for _, p := range tc.rows {
				// Agents' and administrators' prefixes end in their name.
				prefix := strings.TrimSuffix(busauth.InboxPrefix(p), "."+busauth.DefaultAdminName)
				prefix, _, _ = strings.Cut(prefix, ".{{")
				if !strings.Contains(out, "| "+string(p)+" | `"+prefix) {
					t.Errorf("no table row of %s with inbox %s", p, prefix)
				}
			}
		})
	}
	// The whole table is busauth's, unchanged.
	out, _, _ := runVigil(context.Background(), "auth", "show", "--dir", dir)
	if !strings.Contains(out, busauth.PermissionsMarkdown()) {
		t.Error("show does not print busauth.PermissionsMarkdown")
	}
	for _, args := range [][]string{{"auth", "show", "--dir", dir, "root"}, {"auth", "show"}} {
		if _, _, err := runVigil(context.Background(), args...); exitCode(err) != 2 {
			t.Errorf("%v: %v, want exit code 2", args, err)
		}
	}
}

// TestAuthAgentCredsServeOnlyTheirOwnChallenge: `vigil auth agent` mints a
// 0600 credentials file (by VM key or ARM resource ID) whose connection
// may serve its own VM's challenge and not another VM's.
func TestAuthAgentCredsServeOnlyTheirOwnChallenge(t *testing.T) {
	dir, _ := authInit(t, "--agent-ttl", "1h")
	srv := startFromDir(t, dir)
	const armID = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-1"
	other := events.VMKey("/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/app-2")
	tests := []struct {
		name string
		arg  string
		vm   string
		out  string
	}{
		{"VM key", events.VMKey(armID), events.VMKey(armID), ""},
		{"ARM resource ID", armID, events.VMKey(armID), filepath.Join(t.TempDir(), "app-1.creds")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"auth", "agent", tc.arg, "--dir", dir}
			if tc.out != "" {
				args = append(args, "--out", tc.out)
			}
			out, _, err := runVigil(context.Background(), args...)
			if err != nil {
				t.Fatal(err)
			}
			path := tc.out
			if path == "" {
				path = filepath.Join(dir, "creds", "agent-"+tc.vm+".creds")
			}
			if !strings.Contains(out, path) || !strings.Contains(out, "expires in 1h0m0s") || seedPattern.MatchString(out) {
				t.Errorf("agent output: %q", out)
			}
			mustMode0600(t, path)
			c, err := busauth.ReadCreds(path)
			if err != nil {
				t.Fatal(err)
			}
			if c.Principal != busauth.Agent || c.Name != tc.vm || c.InboxPrefix != busauth.AgentInboxPrefix(tc.vm) {
				t.Fatalf("credentials: %v", c)
			}
			conn := connectCredsFile(t, srv, path)
			if err := subscribeRefused(t, conn.NC, events.ChallengeSubject(tc.vm)); err != nil {
				t.Errorf("own challenge refused: %v", err)
			}
			if err := subscribeRefused(t, conn.NC, events.ChallengeSubject(other)); !errors.Is(err, nats.ErrPermissionViolation) {
				t.Errorf("another VM's challenge: %v, want a permission violation", err)
			}
		})
	}

	link := filepath.Join(t.TempDir(), "link.creds")
	if err := os.Symlink(filepath.Join(t.TempDir(), "target"), link); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		args []string
		code int
	}{
		{"not a VM", []string{"auth", "agent", "app-1", "--dir", dir}, 2},
		{"no dir", []string{"auth", "agent", events.VMKey(armID)}, 2},
		{"zero TTL", []string{"auth", "agent", events.VMKey(armID), "--dir", dir, "--ttl", "0s"}, 2},
		{"through a symbolic link", []string{"auth", "agent", events.VMKey(armID), "--dir", dir, "--out", link}, 2},
		{"no identity", []string{"auth", "agent", events.VMKey(armID), "--dir", t.TempDir()}, 1},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := runVigil(context.Background(), tc.args...); exitCode(err) != tc.code {
				t.Fatalf("%v, want exit code %d", err, tc.code)
			}
		})
	}
}

// subscribeRefused subscribes to subject and returns the server's refusal,
// if any.
func subscribeRefused(t *testing.T, nc *nats.Conn, subject string) error {
	t.Helper()
	before := nc.LastError()
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	// A refusal reaches the client before the PONG.
	if _, err := sub.NextMsg(time.Millisecond); errors.Is(err, nats.ErrPermissionViolation) {
		return err
	}
	if last := nc.LastError(); last != before && errors.Is(last, nats.ErrPermissionViolation) &&
		strings.Contains(last.Error(), strconv.Quote(subject)) {
		return last
	}
	return nil
}

// TestAuthAdminMintsAnotherAdministrator: `vigil auth admin` mints a 0600
// credentials file of an administrator that the server accepts, with its
// own inbox prefix.
func TestAuthAdminMintsAnotherAdministrator(t *testing.T) {
	dir, _ := authInit(t)
	srv := startFromDir(t, dir)
	tests := []struct {
		name, admin, ttl string
		code             int
	}{
		{"no expiry", "bob", "", 0},
		{"with TTL", "carol", "720h", 0},
		{"bad name", "Bob", "", 2},
		{"negative TTL", "dave", "-1h", 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"auth", "admin", tc.admin, "--dir", dir}
			if tc.ttl != "" {
				args = append(args, "--ttl="+tc.ttl)
			}
			_, _, err := runVigil(context.Background(), args...)
			if exitCode(err) != tc.code || tc.code != 0 {
				if exitCode(err) != tc.code {
					t.Fatalf("%v, want exit code %d", err, tc.code)
				}
				return
			}
			path := filepath.Join(dir, "creds", "admin-"+tc.admin+".creds")
			mustMode0600(t, path)
			conn := connectCredsFile(t, srv, path)
			if _, err := conn.JS.AccountInfo(context.Background()); err != nil {
				t.Fatalf("administrator %s: %v", tc.admin, err)
			}
		})
	}
}

// TestAuthInitTLS: --tls makes a CA whose server certificate is valid for
// the given hosts and whose client certificates authenticate each
// principal in a TLS handshake; keys are mode 0600.
func TestAuthInitTLS(t *testing.T) {
	dir, out := authInit(t, "--tls", "--tls-host", "nats.example,127.0.0.1")
	d := filepath.Join(dir, dirTLS)
	if !strings.Contains(out, "cert_file: ") || !strings.Contains(out, filepath.Join(d, fileCACert)) {
		t.Errorf("init --tls output lacks the TLS configuration:\n%s", out)
	}
	caPEM, err := os.ReadFile(filepath.Join(d, fileCACert))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("no CA certificate")
	}
	load := func(cert, key string) tls.Certificate {
		t.Helper()
		mustMode0600(t, filepath.Join(d, key))
		c, err := tls.LoadX509KeyPair(filepath.Join(d, cert), filepath.Join(d, key))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	server := load(fileServerPEM, fileServerKey)
	mustMode0600(t, filepath.Join(d, fileCAKey))

	tests := []struct {
		name       string
		serverName string
		p          busauth.Principal
		ok         bool
	}{
		{"ingest by host name", "nats.example", busauth.Ingest, true},
		{"agent by address", "127.0.0.1", busauth.Agent, true},
		{"admin", "nats.example", busauth.Admin, true},
		{"another host", "evil.example", busauth.Keyguard, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cert, key := clientCertFiles(tc.p)
			client := load(cert, key)
			// Over TCP, whose buffers let a refused handshake end at once
			// (net.Pipe would block both ends on the alert).
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			cc, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			sc, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			srv := tls.Server(sc, &tls.Config{Certificates: []tls.Certificate{server}, ClientCAs: pool,
				ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})
			cli := tls.Client(cc, &tls.Config{RootCAs: pool, ServerName: tc.serverName,
				Certificates: []tls.Certificate{client}, MinVersion: tls.VersionTLS12})
			errs := make(chan error, 1)
			go func() { errs <- srv.Handshake(); _ = srv.Close() }()
			err = cli.Handshake()
			_ = cli.Close()
			serr := <-errs
			if (err == nil) != tc.ok {
				t.Fatalf("client handshake: %v, want ok %v", err, tc.ok)
			}
			if !tc.ok {
				return
			}
			if serr != nil {
				t.Fatalf("server handshake: %v", serr)
			}
			if cn := srv.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "vigil-"+string(tc.p) {
				t.Errorf("client certificate of %s names %q", tc.p, cn)
			}
		})
	}
}
