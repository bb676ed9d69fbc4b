package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/services/keyguard"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// binaries are built once per test run.
var binaries = map[string]string{
	"nats-server":         "github.com/nats-io/nats-server/v2",
	"vigil":               "github.com/vigil-cc/vigil/cmd/vigil",
	"vigil-ingest":        "github.com/vigil-cc/vigil/services/ingest/cmd/vigil-ingest",
	"vigil-attest-worker": "github.com/vigil-cc/vigil/services/attest-worker/cmd/vigil-attest-worker",
	"vigil-keyguard":      "github.com/vigil-cc/vigil/services/keyguard/cmd/vigil-keyguard",
	"vigil-auditor":       "github.com/vigil-cc/vigil/services/auditor/cmd/vigil-auditor",
	"vigil-notifier":      "github.com/vigil-cc/vigil/services/notifier/cmd/vigil-notifier",
}

// build builds the binaries named (every one when none is) into dir.
func build(t *testing.T, dir string, names ...string) {
	t.Helper()
	args := []string{"build", "-o", dir + "/"}
	for name, pkg := range binaries {
		if len(names) == 0 || slices.Contains(names, name) {
			args = append(args, pkg)
		}
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// proc is a running OS process whose output is kept for failure reports:
// in memory, or appended to a file for long runs.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	file *os.File // when set, the output goes here instead of out
	done chan error
}

func (p *proc) write(b []byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.file != nil {
		_, _ = p.file.Write(b)
		return
	}
	p.out.Write(b)
}

// output is what the process wrote: all of it, or the last 64 KiB of
// its log file.
func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.file != nil {
		const most = 64 << 10
		var size int64
		if fi, err := p.file.Stat(); err == nil {
			size = fi.Size()
		}
		buf := make([]byte, min(size, most))
		n, _ := p.file.ReadAt(buf, size-int64(len(buf)))
		return string(buf[:n])
	}
	return p.out.String()
}

func start(t *testing.T, bin, name string, args ...string) *proc {
	t.Helper()
	return startLogged(t, "", bin, name, args...)
}

// startLogged starts bin as name; with logFile set its output is appended
// there (a restarted process continues its predecessor's file).
func startLogged(t *testing.T, logFile, bin, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan error, 1)}
	if logFile != "" {
		f, err := os.OpenFile(logFile, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		p.file = f
	}
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.write(append(sc.Bytes(), '\n'))
		}
		_, _ = io.Copy(io.Discard, r)
	}()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { err := p.cmd.Wait(); w.Close(); <-copied; p.done <- err }()
	t.Cleanup(func() {
		p.stop(t)
		if p.file != nil {
			p.mu.Lock()
			_ = p.file.Close()
			p.mu.Unlock()
		}
	})
	return p
}

// stop sends SIGTERM and waits; a process that does not stop is killed.
func (p *proc) stop(t *testing.T) {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("%s did not stop within 15s of SIGTERM", p.name)
	}
}

// kill sends SIGKILL and waits for the process to end.
func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

func freeAddr(t *testing.T) string {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		port, err := natsembed.FreePort("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		// The kernel may offer a port again once its probe closed: the
		// soak takes forty-odd addresses, and a repeat among them (a few
		// runs in a hundred, by the birthday bound) left the second
		// process unable to bind it.
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
	}
}

// handedOut are the ports freeAddr returned in this test binary, never
// returned twice.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// waitReady polls an HTTP readiness endpoint.
func waitReady(t *testing.T, p *proc, url string) {
	t.Helper()
	if err := readyWithin(p, url, 60*time.Second); err != nil {
		t.Fatal(err)
	}
}

// readyWithin polls an HTTP readiness endpoint until it answers 200, the
// process exits or d passes.
func readyWithin(p *proc, url string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-p.done:
			return fmt.Errorf("%s exited: %v\n%s", p.name, err, p.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not ready at %s within %s\n%s", p.name, url, d, tail(p.output(), 40))
}

// summary is the part of `vigil sim run --summary` this test reads.
type summary struct {
	VMs                int               `json:"vms"`
	Attested           int               `json:"attested"`
	Revoked            []string          `json:"revoked"`
	Tampered           map[string]string `json:"tampered"`
	Deleted            []string          `json:"deleted"`
	Drifted            []string          `json:"drifted"`
	HealthyRevoked     []string          `json:"healthy_revoked"`
	TamperedNotRevoked []string          `json:"tampered_not_revoked"`
	DeletedNotRevoked  []string          `json:"deleted_not_revoked"`
	HealthyNotTrusted  []string          `json:"healthy_not_trusted"`
	Verdicts           map[string]int    `json:"verdicts"`
}

// TestMultiProcess runs nats-server, ingest, two attest-workers, keyguard and
// the auditor as separate OS processes, drives them with the simulated Azure
// and fleet of `vigil sim run`, and checks the same outcome as `vigil dev`:
// every healthy VM trusted, every tampered VM revoked, no healthy VM revoked,
// and an audit log that verifies.
//
// "operator" runs the bus the way a production deployment does: NATS in
// operator mode with the identity of `vigil auth init`, provisioning as the
// administrator, each service with its own credentials, keyguard serving the
// agent enrollment API, and every simulated agent enrolling by attestation
// and connecting with the credentials it earned. There, every agent must
// have enrolled (key events "enrolled", backend "nats") and the agents of
// the revoked VMs must have lost their credentials (key events "revoked",
// backend "nats"). "open" runs the same on a bus without authentication.
// In both, no process may log a NATS permissions violation.
func TestMultiProcess(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "bin")
	build(t, bin)
	t.Run("operator", func(t *testing.T) { runMultiProcess(t, bin, true) })
	t.Run("open", func(t *testing.T) {
		// Without bus identity the simulated agents share the simulator's
		// connection (compose's setup today).
		runMultiProcess(t, bin, false)
	})
}

// runMultiProcess is one run of TestMultiProcess with the binaries in bin,
// on a bus in operator mode when auth is set, else on an open one.
func runMultiProcess(t *testing.T, bin string, auth bool) {
	dir := t.TempDir()
	b := func(name string) string { return filepath.Join(bin, name) }

	// The operator's identity (vigil auth init): the server trusts its
	// operator; each principal gets its own credentials file.
	authDir := filepath.Join(dir, "auth")
	creds := func(p busauth.Principal) string { return filepath.Join(authDir, busauth.CredsFile(p)) }
	keyguardAuth := filepath.Join(dir, "keyguard-auth")
	if auth {
		// The full resolver, as in production: revocations hold.
		if out, err := exec.Command(b("vigil"), "auth", "init", "--dir", authDir, "--resolver-dir", filepath.Join(dir, "nats-jwt")).CombinedOutput(); err != nil {
			t.Fatalf("vigil auth init: %v\n%s", err, out)
		}
		copyKeyguardAuth(t, authDir, keyguardAuth)
	}

	natsAddr := freeAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	conf := filepath.Join(dir, "nats.conf")
	natsConf := fmt.Sprintf("listen: %s:%s\nmax_payload: 2MB\njetstream { store_dir: %q }\n", host, port, filepath.Join(dir, "nats"))
	if auth {
		// Includes are relative to the including file.
		natsConf += fmt.Sprintf("include %q\n", filepath.Join("auth", busauth.FileServerConfig))
	}
	if err := os.WriteFile(conf, []byte(natsConf), 0o644); err != nil {
		t.Fatal(err)
	}
	natsProc := start(t, b("nats-server"), "nats-server", "-c", conf)
	natsURL := "nats://" + natsAddr
	waitTCP(t, natsProc, natsAddr)
	procs := map[string]*proc{"nats-server": natsProc}
	var simOut []byte
	// No process, the simulated fleet's agents included, is refused
	// anything by the server's permissions; checked however the test ends.
	defer func() {
		outputs := map[string]string{"vigil sim run": string(simOut)}
		for name, p := range procs {
			outputs[name] = p.output()
		}
		if v := permissionViolations(outputs); len(v) > 0 {
			t.Errorf("NATS permissions violations:\n%s", strings.Join(v, "\n"))
		}
	}()

	// The operator's step (vigil provision): the services do not provision.
	adminArgs := []string{"--nats-url", natsURL}
	if auth {
		adminArgs = append(adminArgs, "--nats-creds", creds(busauth.Admin))
	}
	if out, err := exec.Command(b("vigil"), append([]string{"provision"}, adminArgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("vigil provision: %v\n%s%s", err, out, tail(natsProc.output(), 20))
	}

	simDir := filepath.Join(dir, "sim")
	if out, err := exec.Command(b("vigil"), "sim", "export", "--dir", simDir).CombinedOutput(); err != nil {
		t.Fatalf("vigil sim export: %v\n%s", err, out)
	}
	// The grace period covers a new VM's onboarding as well: its agent
	// enrolls only once ingest has its vmId from ARM (2 to 6 s on a loaded
	// 2-core machine), and a VM still unreachable when the grace ends goes
	// stale and loses its keys.
	const interval, grace = "4s", "10s"
	type svc struct {
		name, bin string
		principal busauth.Principal
		args      []string
	}
	auditDir := filepath.Join(dir, "audit")
	secret := "e2e-webhook-secret-0123456789"
	ingestAddr, armAddr := freeAddr(t), freeAddr(t)
	keyguardArgs := []string{"-master-key-file", filepath.Join(dir, "master.key"), "-create-master-key",
		"-policy", filepath.Join(simDir, "sim-policy.yaml"), "-evidence-test-roots", filepath.Join(simDir, "sim-roots.pem"), "-evidence-offline"}
	var enrollAddr string
	if auth {
		// Every simulated agent enrolls from 127.0.0.1: the per-source
		// limit is raised for them.
		enrollAddr = freeAddr(t)
		keyguardArgs = append(keyguardArgs, "-auth-dir", keyguardAuth, "-enroll-http", enrollAddr, "-enroll-rate", "1000", "-enroll-burst", "1000")
	}
	services := []svc{
		{"auditor", "vigil-auditor", busauth.Auditor, []string{"-log-dir", filepath.Join(auditDir, "log"), "-signer-key", filepath.Join(auditDir, "signer.key"),
			"-verifier-key", filepath.Join(auditDir, "signer.pub"), "-generate-keys"}},
		{"keyguard", "vigil-keyguard", busauth.Keyguard, keyguardArgs},
		{"attest-worker-1", "vigil-attest-worker", busauth.AttestWorker, []string{"-name", "w1", "-policy", filepath.Join(simDir, "sim-policy.yaml"), "-test-roots", filepath.Join(simDir, "sim-roots.pem"),
			"-offline", "-interval", interval, "-grace", grace}},
		{"attest-worker-2", "vigil-attest-worker", busauth.AttestWorker, []string{"-name", "w2", "-policy", filepath.Join(simDir, "sim-policy.yaml"), "-test-roots", filepath.Join(simDir, "sim-roots.pem"),
			"-offline", "-interval", interval, "-grace", grace}},
		{"ingest", "vigil-ingest", busauth.Ingest, []string{"-webhook-secret", secret, "-subscriptions", "00000000-0000-0000-0000-000000000000",
			"-arm-endpoint", "http://" + armAddr, "-arm-static-token", "simulated", "-reconcile-interval", "1m"}},
		{"notifier", "vigil-notifier", busauth.Notifier, []string{"-key-file", filepath.Join(dir, "notifier.key"), "-generate-key", "-allow-private-sinks"}},
	}
	for _, s := range services {
		common := []string{"-nats-url", natsURL, "-log-level", "info"}
		if auth {
			common = append(common, "-nats-creds", creds(s.principal))
		}
		addr := freeAddr(t)
		args := append(append([]string{}, common...), "-http", addr)
		health := addr
		if s.name == "ingest" {
			// The webhook listener serves the webhook alone; health and
			// metrics are on the ops listener.
			health = freeAddr(t)
			args = append(append(append([]string{}, common...), "-webhook-http", ingestAddr), "-http", health)
		}
		p := start(t, b(s.bin), s.name, append(args, s.args...)...)
		procs[s.name] = p
		if s.name != "auditor" { // the auditor is ready once it writes; it takes the lock at once
			waitReady(t, p, "http://"+health+"/readyz")
		}
	}

	// Alerts reach `vigil alerts receive`, subscribed by the administrator,
	// through a front that refuses the first attempt of each notification.
	receiveAddr := freeAddr(t)
	procs["receive"] = start(t, b("vigil"), "receive", "alerts", "receive", "--listen", receiveAddr, "--secret", e2eWebhookSecret, "--json")
	waitTCP(t, procs["receive"], receiveAddr)
	front := newRefuseFirstAttempts(t, "http://"+receiveAddr)
	frontSrv := httptest.NewServer(front)
	defer frontSrv.Close()
	if out, err := exec.Command(b("vigil"), append([]string{"alerts", "subscribe", "--id", "e2e", "--sink", frontSrv.URL + "/",
		"--secret", e2eWebhookSecret, "--allow-private-sinks"}, adminArgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("vigil alerts subscribe: %v\n%s", err, out)
	}

	// The simulated Azure and fleet: it grants keys and reads the streams
	// as the administrator; in operator mode each agent enrolls at
	// keyguard and connects with its own credentials.
	sumFile := filepath.Join(dir, "summary.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	simArgs := append(append([]string{"sim", "run"}, adminArgs...),
		"--webhook", "http://"+ingestAddr+"/eventgrid?secret="+secret, "--arm-listen", armAddr,
		"--vms", "12", "--tamper-after", "6s", "--for", "40s", "--summary", sumFile, "--check")
	if auth {
		simArgs = append(simArgs, "--enroll-url", "http://"+enrollAddr)
	}
	var err error
	simOut, err = exec.CommandContext(ctx, b("vigil"), simArgs...).CombinedOutput()
	logs := func() string {
		var logs strings.Builder
		for name, p := range procs {
			fmt.Fprintf(&logs, "\n--- %s ---\n%s", name, tail(p.output(), 40))
		}
		return logs.String()
	}
	if err != nil {
		t.Fatalf("vigil sim run: %v\n%s%s", err, simOut, logs())
	}
	raw, err := os.ReadFile(sumFile)
	if err != nil {
		t.Fatal(err)
	}
	var s summary
	if err := json.Unmarshal(raw, &s); err != nil {
		t.Fatal(err)
	}
	if s.VMs != 12 || s.Attested != 12 || len(s.Tampered) != 3 || len(s.Deleted) != 1 || len(s.Revoked) != 4 || s.Verdicts["affirming"] == 0 {
		t.Fatalf("summary: %s\n%s", raw, simOut)
	}
	if auth {
		checkAgentCredentials(t, natsURL, creds(busauth.Admin), s, logs)
	}
	// The tampered VMs' alerts were delivered, signed (receive verifies),
	// and the drifted VM's configuration finding fired and then resolved,
	// each notification under one webhook-id across its retry.
	if len(s.Drifted) != 1 {
		t.Fatalf("summary: drifted %v, want one VM\n%s", s.Drifted, raw)
	}
	driftKey := events.AlertKey(s.Drifted[0], "config.boot_diagnostics.screenshots")
	delivered := func() string {
		evs := received(procs["receive"].output())
		if !slices.ContainsFunc(evs, func(ev sink.CloudEvent) bool {
			return ev.Data.Alert.Code == "vm.untrusted" && ev.Data.State == sink.Firing
		}) {
			return "no vm.untrusted firing"
		}
		why, _ := firedAndResolved(evs, driftKey)
		return why
	}
	for deadline := time.Now().Add(30 * time.Second); delivered() != ""; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("vigil alerts receive: %s:\n%s%s", delivered(), tail(procs["receive"].output(), 30), logs())
		}
	}
	if err := oneIDPerNotification(received(procs["receive"].output()), front.ids()); err != nil {
		t.Errorf("%v\n%s", err, tail(procs["receive"].output(), 30))
	}

	// Stop the services (SIGTERM: they drain and exit) and check the log offline.
	for _, name := range []string{"ingest", "attest-worker-1", "attest-worker-2", "keyguard", "notifier", "receive", "auditor"} {
		procs[name].stop(t)
	}
	out, err := exec.Command(b("vigil"), "audit", "verify", "--log", filepath.Join(auditDir, "log"), "--key", filepath.Join(auditDir, "signer.pub")).CombinedOutput()
	if err != nil {
		t.Fatalf("vigil audit verify: %v\n%s", err, out)
	}
	t.Logf("sim:\n%s\naudit: %s", tail(string(simOut), 6), out)
}

// copyKeyguardAuth gives keyguard, in dst, the files of the operator's
// identity in authDir that it needs and no other secret.
func copyKeyguardAuth(t *testing.T, authDir, dst string) {
	t.Helper()
	for _, name := range busauth.KeyguardFiles() {
		data, err := os.ReadFile(filepath.Join(authDir, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, name)), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// e2eWebhookSecret signs the deliveries to vigil alerts receive.
const e2eWebhookSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// permissionViolations are the lines of outputs (process name to output)
// that report a NATS permissions violation, as the client library words it
// ("permissions violation for publish to ...") or the server does
// ("Permissions Violation", "Publish Violation", "Subscription Violation").
func permissionViolations(outputs map[string]string) []string {
	var found []string
	for name, out := range outputs {
		for _, line := range strings.Split(out, "\n") {
			l := strings.ToLower(line)
			if strings.Contains(l, "permissions violation") || strings.Contains(l, "publish violation") || strings.Contains(l, "subscription violation") {
				found = append(found, name+": "+line)
			}
		}
	}
	sort.Strings(found)
	return found
}

// faultSilent is the fault of the simulated fleet
// (cmd/vigil/internal/fleet.FaultSilent) whose VM stops answering: it goes
// stale, not untrusted.
const faultSilent = "silent-agent"

// checkAgentCredentials reads keyguard's key events on VIGIL_EVENTS as the
// administrator, until every VM's agent has enrolled (action "enrolled",
// backend "nats") and the agent credentials of every VM that went untrusted
// (tampered measurement, debug enabled) or was deleted (retired) were
// revoked (action "revoked", backend "nats"), or 30 s have passed. A stale
// VM (the silent agent) keeps its agent credentials: keyguard revokes them
// for an untrusted verdict, retirement or an operator only (it may be
// unreachable for reasons of its network, and has nothing to connect with
// if they were gone). No other VM's agent credentials may be revoked.
func checkAgentCredentials(t *testing.T, natsURL, adminCreds string, s summary, logs func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c, err := busauth.ReadCreds(adminCreds)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := bus.Connect(ctx, bus.Config{URL: natsURL, Name: "e2e events", CredsFile: adminCreds, InboxPrefix: c.InboxPrefix})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.VMEventSubject("*", events.KindKey)}})
	if err != nil {
		t.Fatal(err)
	}
	enrolled, revoked := map[string]bool{}, map[string]bool{}
	missing := func() []string {
		var m []string
		if len(enrolled) < s.VMs {
			m = append(m, fmt.Sprintf("%d of %d agents enrolled", len(enrolled), s.VMs))
		}
		for vm, fault := range s.Tampered {
			if fault != faultSilent && !revoked[vm] {
				m = append(m, fmt.Sprintf("no revocation of the agent credentials of VM %s (tampered: %s)", vm, fault))
			}
		}
		for _, vm := range s.Deleted {
			if !revoked[vm] {
				m = append(m, fmt.Sprintf("no revocation of the agent credentials of VM %s (deleted)", vm))
			}
		}
		return m
	}
	for len(missing()) > 0 {
		msg, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("key events: %v: %s\n%s", err, strings.Join(missing(), "; "), logs())
		}
		e, err := events.Parse(msg.Data())
		if err != nil {
			t.Fatalf("key event on %s: %v", msg.Subject(), err)
		}
		var k events.Key
		if err := e.Decode(events.TypeKey, &k); err != nil {
			t.Fatalf("key event on %s: %v", msg.Subject(), err)
		}
		if k.Backend != keyguard.BackendNATS {
			continue
		}
		switch k.Action {
		case events.KeyEnrolled:
			enrolled[k.VMKey] = true
		case events.KeyRevoked:
			revoked[k.VMKey] = true
		}
	}
	for vm := range revoked {
		if fault, tampered := s.Tampered[vm]; (!tampered || fault == faultSilent) && !slices.Contains(s.Deleted, vm) {
			t.Errorf("the agent credentials of VM %s, neither untrusted nor deleted, were revoked", vm)
		}
	}
	t.Logf("%d agents enrolled, the credentials of %d revoked", len(enrolled), len(revoked))
}

func waitTCP(t *testing.T, p *proc, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + addr) // NATS answers with its INFO line, not HTTP
		if err == nil {
			resp.Body.Close()
			return
		}
		if !strings.Contains(err.Error(), "refused") {
			return
		}
		select {
		case err := <-p.done:
			t.Fatalf("%s exited: %v\n%s", p.name, err, p.output())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s does not listen on %s\n%s", p.name, addr, p.output())
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// permissionViolations finds the violations as nats.go and nats-server
// word them (lines from a run where `vigil sim run` granted under an actor
// its administrator may not use), and nothing else.
func TestPermissionViolations(t *testing.T) {
	outputs := map[string]string{
		"vigil sim run": "vigil sim: 12 VMs\n" +
			`2026/12/02 13:02:30 ERROR NATS async error component=bus subject="" err="nats: permissions violation: Permissions Violation for Publish to \"vigil.keyguard.admin.grant.vigil-sim\""` + "\n",
		"nats-server": "[7532] 2026/12/02 13:02:29.487656 [ERR] 127.0.0.1:53812 - cid:5 - authentication error\n" +
			`[7532] 2026/12/02 13:02:30.477776 [ERR] 127.0.0.1:53878 - cid:79 - "v1.55.0:go:vigil keyguard" - "A/VIGIL/jwt:U" - Publish Violation - Subject "vigil.keyguard.admin.grant.vigil-sim"` + "\n" +
			`[7532] 2026/12/02 13:02:31.000000 [ERR] 127.0.0.1:53878 - cid:80 - "v1.55.0:go:vigil-ingest" - "A/VIGIL/jwt:U" - Subscription Violation - Subject "vigil.events.>"` + "\n",
		"keyguard": `{"level":"INFO","msg":"agent enrolled","vm":"x"}` + "\n",
	}
	v := permissionViolations(outputs)
	if len(v) != 3 || !strings.HasPrefix(v[0], "nats-server: ") || !strings.HasPrefix(v[2], "vigil sim run: ") {
		t.Fatalf("found %q", v)
	}
}
