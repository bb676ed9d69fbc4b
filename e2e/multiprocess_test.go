package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// binaries are built once per test run.
var binaries = map[string]string{
	"nats-server":         "github.com/nats-io/nats-server/v2",
	"vigil":               "github.com/vigil-cc/vigil/cmd/vigil",
	"vigil-ingest":        "github.com/vigil-cc/vigil/services/ingest/cmd/vigil-ingest",
	"vigil-attest-worker": "github.com/vigil-cc/vigil/services/attest-worker/cmd/vigil-attest-worker",
	"vigil-keyguard":      "github.com/vigil-cc/vigil/services/keyguard/cmd/vigil-keyguard",
	"vigil-auditor":       "github.com/vigil-cc/vigil/services/auditor/cmd/vigil-auditor",
}

func build(t *testing.T, dir string) {
	t.Helper()
	args := []string{"build", "-o", dir + "/"}
	for _, pkg := range binaries {
		args = append(args, pkg)
	}
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
}

// proc is a running OS process whose output is kept for failure reports.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan error
}

func (p *proc) write(b []byte) {
	p.mu.Lock()
	p.out.Write(b)
	p.mu.Unlock()
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, bin, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), done: make(chan error, 1)}
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}
	r, w := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = w, w
	go func() {
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			p.write(append(sc.Bytes(), '\n'))
		}
	}()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait(); w.Close() }()
	t.Cleanup(func() { p.stop(t) })
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

func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// waitReady polls an HTTP readiness endpoint.
func waitReady(t *testing.T, p *proc, url string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-p.done:
			t.Fatalf("%s exited: %v\n%s", p.name, err, p.output())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%s not ready at %s within 60s\n%s", p.name, url, p.output())
}

// summary is the part of `vigil sim run --summary` this test reads.
type summary struct {
	VMs                int               `json:"vms"`
	Attested           int               `json:"attested"`
	Revoked            []string          `json:"revoked"`
	Tampered           map[string]string `json:"tampered"`
	Deleted            []string          `json:"deleted"`
	HealthyRevoked     []string          `json:"healthy_revoked"`
	TamperedNotRevoked []string          `json:"tampered_not_revoked"`
	HealthyNotTrusted  []string          `json:"healthy_not_trusted"`
	Verdicts           map[string]int    `json:"verdicts"`
}

// TestMultiProcess runs nats-server, ingest, two attest-workers, keyguard and
// the auditor as separate OS processes, drives them with the simulated Azure
// and fleet of `vigil sim run`, and checks the same outcome as `vigil dev`:
// every healthy VM trusted, every tampered VM revoked, no healthy VM revoked,
// and an audit log that verifies.
func TestMultiProcess(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build(t, bin)
	b := func(name string) string { return filepath.Join(bin, name) }

	natsAddr := freeAddr(t)
	host, port, _ := strings.Cut(natsAddr, ":")
	conf := filepath.Join(dir, "nats.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("listen: %s:%s\nmax_payload: 2MB\njetstream { store_dir: %q }\n", host, port, filepath.Join(dir, "nats"))), 0o644); err != nil {
		t.Fatal(err)
	}
	natsProc := start(t, b("nats-server"), "nats-server", "-c", conf)
	natsURL := "nats://" + natsAddr
	waitTCP(t, natsProc, natsAddr)
	// The operator's step (vigil provision): the services do not provision.
	provisioner, err := bus.Connect(t.Context(), bus.Config{URL: natsURL, Name: "vigil-provision"})
	if err != nil {
		t.Fatal(err)
	}
	natstest.Provision(t, provisioner.NC, events.Topology{})
	_ = provisioner.Close()

	simDir := filepath.Join(dir, "sim")
	if out, err := exec.Command(b("vigil"), "sim", "export", "--dir", simDir).CombinedOutput(); err != nil {
		t.Fatalf("vigil sim export: %v\n%s", err, out)
	}
	const interval, grace = "4s", "6s"
	common := []string{"-nats-url", natsURL, "-log-level", "info"}
	type svc struct {
		name, bin string
		args      []string
	}
	auditDir := filepath.Join(dir, "audit")
	secret := "e2e-webhook-secret-0123456789"
	ingestAddr, armAddr := freeAddr(t), freeAddr(t)
	services := []svc{
		{"auditor", "vigil-auditor", []string{"-log-dir", filepath.Join(auditDir, "log"), "-signer-key", filepath.Join(auditDir, "signer.key"),
			"-verifier-key", filepath.Join(auditDir, "signer.pub"), "-generate-keys"}},
		{"keyguard", "vigil-keyguard", []string{"-master-key-file", filepath.Join(dir, "master.key"), "-create-master-key",
			"-policy", filepath.Join(simDir, "sim-policy.yaml"), "-evidence-test-roots", filepath.Join(simDir, "sim-roots.pem"), "-evidence-offline"}},
		{"attest-worker-1", "vigil-attest-worker", []string{"-name", "w1", "-policy", filepath.Join(simDir, "sim-policy.yaml"), "-test-roots", filepath.Join(simDir, "sim-roots.pem"),
			"-offline", "-interval", interval, "-grace", grace}},
		{"attest-worker-2", "vigil-attest-worker", []string{"-name", "w2", "-policy", filepath.Join(simDir, "sim-policy.yaml"), "-test-roots", filepath.Join(simDir, "sim-roots.pem"),
			"-offline", "-interval", interval, "-grace", grace}},
		{"ingest", "vigil-ingest", []string{"-webhook-secret", secret, "-subscriptions", "00000000-0000-0000-0000-000000000000",
			"-arm-endpoint", "http://" + armAddr, "-arm-static-token", "simulated", "-reconcile-interval", "1m"}},
	}
	procs := map[string]*proc{}
	for _, s := range services {
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

	sumFile := filepath.Join(dir, "summary.json")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	simCmd := exec.CommandContext(ctx, b("vigil"), "sim", "run", "--nats-url", natsURL,
		"--webhook", "http://"+ingestAddr+"/eventgrid?secret="+secret, "--arm-listen", armAddr,
		"--vms", "12", "--tamper-after", "6s", "--for", "35s", "--summary", sumFile, "--check")
	simOut, err := simCmd.CombinedOutput()
	if err != nil {
		var logs strings.Builder
		for name, p := range procs {
			fmt.Fprintf(&logs, "\n--- %s ---\n%s", name, tail(p.output(), 40))
		}
		t.Fatalf("vigil sim run: %v\n%s%s", err, simOut, logs.String())
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

	// Stop the services (SIGTERM: they drain and exit) and check the log offline.
	for _, name := range []string{"ingest", "attest-worker-1", "attest-worker-2", "keyguard", "auditor"} {
		procs[name].stop(t)
	}
	out, err := exec.Command(b("vigil"), "audit", "verify", "--log", filepath.Join(auditDir, "log"), "--key", filepath.Join(auditDir, "signer.pub")).CombinedOutput()
	if err != nil {
		t.Fatalf("vigil audit verify: %v\n%s", err, out)
	}
	t.Logf("sim:\n%s\naudit: %s", tail(string(simOut), 6), out)
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
