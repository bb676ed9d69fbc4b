package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/auditor/auditlog"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// The soak's shape. `make soak` runs the long form (30 minutes, 10,000
// VMs at a 1-minute interval, a fault every 3 minutes); `make test` runs
// these defaults.
var (
	soakDuration   = flag.Duration("soak.duration", 3*time.Minute, "how long the simulated fleet runs")
	soakVMs        = flag.Int("soak.vms", 150, "simulated VMs, out of process, each agent enrolled with its own connection")
	soakInterval   = flag.Duration("soak.interval", 20*time.Second, "re-attestation interval (the grace period is two)")
	soakFaultEvery = flag.Duration("soak.fault-every", 40*time.Second, "time between faults, alternately a service killed and a NATS node restarted")
	soakOut        = flag.String("soak.out", "", "directory for summary.json, soak.svg and every process's log (default: the test's temporary directory)")
	soakSeed       = flag.Uint64("soak.seed", 0, "seed of the fault choices (0: from the clock; the summary names it)")
)

// TestSoak runs Vigil as it runs in production, for a while, with faults:
// a 3-node NATS cluster in operator mode (every stream and bucket with 3
// replicas), two copies of each service as separate processes (Event Grid
// and the enrollment API reach ingest and keyguard through a front that
// takes whichever copy answers, the second auditor is the first's hot
// standby on the same log), the simulated fleet out of process with every
// agent enrolled by attestation, the tamper scenario, and a fault every
// -soak.fault-every: alternately a random service process killed with
// SIGKILL and started again, and a random NATS node restarted.
//
// At the end it checks and prints: every healthy VM attested and never
// without a verdict for more than two intervals once onboarded; no
// healthy VM ever revoked; every tampered or deleted VM revoked; the
// alerts delivered exactly the expected ones; the audit log verifies and
// holds every event of VIGIL_EVENTS exactly once; no process's memory
// grew after warm-up; every service ready again by itself; no
// permissions violation. The summary (summary.json) and a plot of
// attestations/s, lateness and RSS over time (soak.svg) go to -soak.out.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak runs for minutes")
	}
	out := *soakOut
	if out == "" {
		out = t.TempDir()
	}
	if err := os.MkdirAll(filepath.Join(out, "logs"), 0o755); err != nil {
		t.Fatal(err)
	}
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	r := &soakRun{t: t, dir: t.TempDir(), out: out, procs: map[string]*proc{}, specs: map[string]procSpec{},
		interval: *soakInterval, rng: rand.New(rand.NewPCG(seed, 0x5eed))}
	r.bin = filepath.Join(r.dir, "bin")
	build(t, r.bin)
	r.startCluster()
	r.startServices()
	s := r.run(*soakDuration, *soakFaultEvery)
	s.Seed = seed
	r.finish(&s)
}

// procSpec is how a process of the soak is (re)started.
type procSpec struct {
	bin   string
	args  []string
	ready string // URL answering 200 once it is up
	group string // "nats" or "service"
}

type soakRun struct {
	t        *testing.T
	bin, dir string
	out      string
	interval time.Duration
	rng      *rand.Rand

	mu    sync.Mutex
	procs map[string]*proc // the live process of each name
	specs map[string]procSpec
	// restarted is when each name's process was last started again by
	// a fault.
	restarted map[string]time.Time
	// cpu is the CPU seconds last sampled of each process id of a name.
	cpu map[string]map[int]float64

	natsURLs    string
	adminCreds  string
	adminArgs   []string
	auditDir    string
	auditPub    string
	simDir      string
	authDir     string
	webhook     *httptest.Server
	enrollFront *httptest.Server
	armAddr     string
	receive     string
}

func (r *soakRun) b(name string) string { return filepath.Join(r.bin, name) }

func (r *soakRun) creds(p busauth.Principal) string {
	return filepath.Join(r.authDir, busauth.CredsFile(p))
}

// launch starts name from its spec and waits until it is ready.
func (r *soakRun) launch(name string) *proc {
	r.t.Helper()
	r.mu.Lock()
	spec := r.specs[name]
	r.mu.Unlock()
	p := startLogged(r.t, filepath.Join(r.out, "logs", name+".log"), spec.bin, name, spec.args...)
	r.mu.Lock()
	r.procs[name] = p
	r.mu.Unlock()
	if spec.ready != "" {
		waitReady(r.t, p, spec.ready)
	}
	return p
}

func (r *soakRun) proc(name string) *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.procs[name]
}

func (r *soakRun) names(group string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var names []string
	for name, s := range r.specs {
		if s.group == group {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// startCluster makes the operator's identity and starts three NATS nodes
// routed to each other, each with its own store and account resolver,
// then provisions every stream and bucket with three replicas.
func (r *soakRun) startCluster() {
	t := r.t
	r.authDir = filepath.Join(r.dir, "auth")
	resolver := filepath.Join(r.dir, "jwt")
	if out, err := exec.Command(r.b("vigil"), "auth", "init", "--dir", r.authDir, "--resolver-dir", resolver).CombinedOutput(); err != nil {
		t.Fatalf("vigil auth init: %v\n%s", err, out)
	}
	serverConf, err := os.ReadFile(filepath.Join(r.authDir, busauth.FileServerConfig))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(serverConf), fmt.Sprintf("%q", resolver)) {
		t.Fatalf("%s does not name the resolver directory %s", busauth.FileServerConfig, resolver)
	}
	const nodes = 3
	var client, route, monitor [nodes]string
	for i := range nodes {
		client[i], route[i], monitor[i] = freeAddr(t), freeAddr(t), freeAddr(t)
	}
	var routes, urls []string
	for i := range nodes {
		routes = append(routes, fmt.Sprintf("%q", "nats-route://"+route[i]))
		urls = append(urls, "nats://"+client[i])
	}
	r.natsURLs = strings.Join(urls, ",")
	for i := range nodes {
		name := fmt.Sprintf("nats-%d", i+1)
		// Each node keeps its own copy of the account JWTs (keyguard's
		// revocations reach every node through the system account).
		auth := strings.ReplaceAll(string(serverConf), fmt.Sprintf("%q", resolver), fmt.Sprintf("%q", resolver+"-"+name))
		authFile := filepath.Join(r.dir, name+"-auth.conf")
		if err := os.WriteFile(authFile, []byte(auth), 0o600); err != nil {
			t.Fatal(err)
		}
		conf := fmt.Sprintf("server_name: %s\nlisten: %s\nhttp: %s\nmax_payload: 2MB\njetstream { store_dir: %q }\n"+
			"cluster {\n  name: vigil\n  listen: %s\n  routes: [%s]\n}\ninclude %q\n",
			name, client[i], monitor[i], filepath.Join(r.dir, name), route[i], strings.Join(routes, ", "), filepath.Base(authFile))
		confFile := filepath.Join(r.dir, name+".conf")
		if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		r.specs[name] = procSpec{bin: r.b("nats-server"), args: []string{"-c", confFile}, ready: "http://" + monitor[i] + "/healthz", group: "nats"}
	}
	// All three first: a node's JetStream is healthy only once the
	// cluster has a meta leader.
	for _, name := range r.names("nats") {
		p := startLogged(t, filepath.Join(r.out, "logs", name+".log"), r.specs[name].bin, name, r.specs[name].args...)
		r.procs[name] = p
	}
	for _, name := range r.names("nats") {
		waitReady(t, r.procs[name], r.specs[name].ready)
	}
	r.adminCreds = r.creds(busauth.Admin)
	r.adminArgs = []string{"--nats-url", r.natsURLs, "--nats-creds", r.adminCreds}
	if out, err := exec.Command(r.b("vigil"), append([]string{"provision", "--replicas", "3"}, r.adminArgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("vigil provision: %v\n%s", err, out)
	}
}

// startServices starts two copies of each service, the fronts, and the
// alert receiver subscribed as the administrator.
func (r *soakRun) startServices() {
	t := r.t
	r.simDir = filepath.Join(r.dir, "sim")
	if out, err := exec.Command(r.b("vigil"), "sim", "export", "--dir", r.simDir).CombinedOutput(); err != nil {
		t.Fatalf("vigil sim export: %v\n%s", err, out)
	}
	keyguardAuth := filepath.Join(r.dir, "keyguard-auth")
	copyKeyguardAuth(t, r.authDir, keyguardAuth)
	r.auditDir = filepath.Join(r.dir, "audit")
	r.auditPub = filepath.Join(r.auditDir, "signer.pub")
	r.armAddr = freeAddr(t)
	policy, roots := filepath.Join(r.simDir, "sim-policy.yaml"), filepath.Join(r.simDir, "sim-roots.pem")
	interval, grace := r.interval.String(), (2 * r.interval).String()
	var webhooks, enrolls []string
	type svc struct {
		name      string
		bin       string
		principal busauth.Principal
		args      []string
		health    string // "readyz", or "healthz" for a standby
	}
	var services []svc
	for i, copy := range []string{"a", "b"} {
		auditor := []string{"-log-dir", filepath.Join(r.auditDir, "log"), "-signer-key", filepath.Join(r.auditDir, "signer.key"), "-verifier-key", r.auditPub}
		keyguard := []string{"-master-key-file", filepath.Join(r.dir, "master.key"),
			"-policy", policy, "-evidence-test-roots", roots, "-evidence-offline", "-auth-dir", keyguardAuth,
			"-enroll-rate", "100000", "-enroll-burst", "100000"}
		notifier := []string{"-key-file", filepath.Join(r.dir, "notifier.key"), "-allow-private-sinks"}
		if i == 0 {
			// The first copy makes the shared keys; the second starts
			// after it.
			auditor = append(auditor, "-generate-keys")
			keyguard = append(keyguard, "-create-master-key")
			notifier = append(notifier, "-generate-key")
		}
		enroll, webhook := freeAddr(t), freeAddr(t)
		enrolls, webhooks = append(enrolls, enroll), append(webhooks, webhook)
		services = append(services,
			svc{"auditor-" + copy, "vigil-auditor", busauth.Auditor, auditor, "healthz"},
			svc{"keyguard-" + copy, "vigil-keyguard", busauth.Keyguard, append(keyguard, "-enroll-http", enroll), "readyz"},
			svc{"attest-worker-" + copy, "vigil-attest-worker", busauth.AttestWorker, []string{"-name", "w" + copy, "-policy", policy, "-test-roots", roots,
				"-offline", "-interval", interval, "-grace", grace}, "readyz"},
			svc{"ingest-" + copy, "vigil-ingest", busauth.Ingest, []string{"-webhook-secret", soakWebhookSecret, "-subscriptions", "00000000-0000-0000-0000-000000000000",
				"-arm-endpoint", "http://" + r.armAddr, "-arm-static-token", "simulated", "-reconcile-interval", "1m", "-webhook-http", webhook}, "readyz"},
			svc{"notifier-" + copy, "vigil-notifier", busauth.Notifier, notifier, "readyz"},
		)
	}
	for _, s := range services {
		health := freeAddr(t)
		args := append([]string{"-nats-url", r.natsURLs, "-nats-creds", r.creds(s.principal), "-log-level", "warn", "-replicas", "3", "-http", health}, s.args...)
		r.specs[s.name] = procSpec{bin: r.b(s.bin), args: args, ready: "http://" + health + "/" + s.health, group: "service"}
		r.launch(s.name)
	}
	r.webhook = httptest.NewServer(&front{backends: webhooks})
	t.Cleanup(r.webhook.Close)
	r.enrollFront = httptest.NewServer(&front{backends: enrolls})
	t.Cleanup(r.enrollFront.Close)

	r.receive = freeAddr(t)
	r.specs["receive"] = procSpec{bin: r.b("vigil"), args: []string{"alerts", "receive", "--listen", r.receive, "--secret", e2eWebhookSecret, "--json"}, group: "tool"}
	waitTCP(t, r.launch("receive"), r.receive)
	if out, err := exec.Command(r.b("vigil"), append([]string{"alerts", "subscribe", "--id", "soak", "--sink", "http://" + r.receive + "/",
		"--secret", e2eWebhookSecret, "--allow-private-sinks"}, r.adminArgs...)...).CombinedOutput(); err != nil {
		t.Fatalf("vigil alerts subscribe: %v\n%s", err, out)
	}
}

// soakWebhookSecret is ingest's Event Grid webhook secret in the soak.
const soakWebhookSecret = "soak-webhook-secret-0123456789"

// fault is one fault the soak caused.
type fault struct {
	AtS    float64 `json:"at_s"`
	Kind   string  `json:"kind"` // "kill -9" or "nats restart"
	Target string  `json:"target"`
	// BackS is how long the process took to be ready again; Err says
	// why it was not.
	BackS float64 `json:"back_s"`
	Err   string  `json:"error,omitempty"`
}

// run starts the simulated fleet for d, observes it and causes a fault
// every faultEvery, and returns what it saw.
func (r *soakRun) run(d, faultEvery time.Duration) soakSummary {
	t := r.t
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	obs := newObserver(r.interval)
	conn := r.adminConn(ctx)
	defer func() { _ = conn.Close() }()
	obsDone := make(chan error, 1)
	go func() { obsDone <- obs.follow(ctx, conn) }()

	simSummary := filepath.Join(r.dir, "sim-summary.json")
	r.specs["sim"] = procSpec{bin: r.b("vigil"), group: "tool", args: append(append([]string{"sim", "run"}, r.adminArgs...),
		"--webhook", r.webhook.URL+"/eventgrid?secret="+soakWebhookSecret, "--arm-listen", r.armAddr,
		"--enroll-url", r.enrollFront.URL, "--vms", fmt.Sprint(*soakVMs), "--tamper-after", (d / 4).String(),
		"--for", d.String(), "--summary", simSummary)}
	start := time.Now()
	sim := r.launch("sim")

	var samples []sample
	var faults []fault
	sampleTick := time.NewTicker(5 * time.Second)
	defer sampleTick.Stop()
	faultTick := time.NewTicker(faultEvery)
	defer faultTick.Stop()
	faultDone := make(chan fault, 1)
	faulting := false
	var simErr error
loop:
	for {
		select {
		case simErr = <-sim.done:
			break loop
		case now := <-sampleTick.C:
			samples = append(samples, r.sample(obs, now.Sub(start)))
		case <-faultTick.C:
			// No fault in the last half period: the end is checked on a
			// recovered system.
			if faulting || time.Since(start) > d-faultEvery/2 {
				continue
			}
			faulting = true
			kind := "kill -9"
			if len(faults)%2 == 1 {
				kind = "nats restart"
			}
			go func() { faultDone <- r.cause(kind, start) }()
		case f := <-faultDone:
			faulting = false
			faults = append(faults, f)
			t.Logf("fault at %.0fs: %s %s, ready again after %.1fs %s", f.AtS, f.Kind, f.Target, f.BackS, f.Err)
		}
	}
	if faulting {
		f := <-faultDone
		faults = append(faults, f)
	}
	end := time.Since(start)
	if simErr != nil {
		t.Fatalf("vigil sim run: %v\n%s", simErr, tail(sim.output(), 40))
	}
	raw, err := os.ReadFile(simSummary)
	if err != nil {
		t.Fatal(err)
	}
	var sum summary
	if err := json.Unmarshal(raw, &sum); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-obsDone; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("following the verdicts: %v", err)
	}
	return obs.summarize(sum, samples, faults, start, end)
}

// cause causes one fault of kind and returns it once the process is
// ready again.
func (r *soakRun) cause(kind string, start time.Time) fault {
	group := "service"
	if kind == "nats restart" {
		group = "nats"
	}
	names := r.names(group)
	target := names[r.rng.IntN(len(names))]
	f := fault{AtS: time.Since(start).Seconds(), Kind: kind, Target: target}
	p := r.proc(target)
	if kind == "kill -9" {
		p.kill()
	} else {
		p.stop(r.t)
	}
	down := time.Now()
	r.mu.Lock()
	spec := r.specs[target]
	r.mu.Unlock()
	p = startLogged(r.t, filepath.Join(r.out, "logs", target+".log"), spec.bin, target, spec.args...)
	r.mu.Lock()
	r.procs[target] = p
	r.mu.Unlock()
	if err := readyWithin(p, spec.ready, 2*time.Minute); err != nil {
		f.Err = err.Error()
	}
	f.BackS = time.Since(down).Seconds()
	r.mu.Lock()
	if r.restarted == nil {
		r.restarted = map[string]time.Time{}
	}
	r.restarted[target] = time.Now()
	r.mu.Unlock()
	return f
}

// sample reads every live process's RSS and the verdicts of the last
// window.
func (r *soakRun) sample(obs *observer, at time.Duration) sample {
	s := sample{AtS: at.Seconds(), RSSMiB: map[string]float64{}, CPUS: map[string]float64{}}
	r.mu.Lock()
	if r.cpu == nil {
		r.cpu = map[string]map[int]float64{}
	}
	for name, p := range r.procs {
		if p.cmd.ProcessState != nil || p.cmd.Process == nil {
			continue
		}
		pid := p.cmd.Process.Pid
		if rss, err := rssMiB(pid); err == nil {
			s.RSSMiB[name] = rss
		}
		if cpu, err := cpuSeconds(pid); err == nil {
			if r.cpu[name] == nil {
				r.cpu[name] = map[int]float64{}
			}
			r.cpu[name][pid] = cpu
		}
	}
	// A process's CPU: what each of its incarnations used, up to the
	// last sample it was alive for.
	for name, pids := range r.cpu {
		for _, cpu := range pids {
			s.CPUS[name] += cpu
		}
	}
	r.mu.Unlock()
	obs.window(&s)
	return s
}

// cpuSeconds reads the user and system CPU a process has used from
// /proc/<pid>/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command name, which is in parentheses:
	// state is the first, utime the 12th, stime the 13th.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var utime, stime float64
	if _, err := fmt.Sscan(f[11], &utime); err != nil {
		return 0, err
	}
	if _, err := fmt.Sscan(f[12], &stime); err != nil {
		return 0, err
	}
	return (utime + stime) / clockTicks, nil
}

// clockTicks is Linux's USER_HZ, the unit of /proc/<pid>/stat's times.
const clockTicks = 100

// rssMiB reads a process's resident set size from /proc.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb float64
			if _, err := fmt.Sscanf(strings.TrimSpace(rest), "%f kB", &kb); err != nil {
				return 0, err
			}
			return kb / 1024, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

func (r *soakRun) adminConn(ctx context.Context) *bus.Conn {
	r.t.Helper()
	c, err := busauth.ReadCreds(r.adminCreds)
	if err != nil {
		r.t.Fatal(err)
	}
	conn, err := bus.Connect(ctx, bus.Config{URL: r.natsURLs, Name: "soak", CredsFile: r.adminCreds, InboxPrefix: c.InboxPrefix})
	if err != nil {
		r.t.Fatal(err)
	}
	return conn
}

// finish checks the end state, writes the summary and the plot, and
// fails the test on any check that failed.
func (r *soakRun) finish(s *soakSummary) {
	t := r.t
	check := func(name string, problems []string) {
		s.Checks = append(s.Checks, soakCheck{Name: name, OK: len(problems) == 0, Problems: problems})
	}
	var unrecovered []string
	for _, f := range s.Faults {
		if f.Err != "" {
			unrecovered = append(unrecovered, fmt.Sprintf("%s %s at %.0fs: %s", f.Kind, f.Target, f.AtS, f.Err))
		}
	}
	check("every process faulted came back", unrecovered)
	check("services ready again by themselves", r.allReady())
	check("healthy VMs attested, none without a verdict for more than two intervals", s.gapProblems())
	check("outcome: healthy trusted and never revoked, tampered and deleted revoked", s.outcomeProblems())
	check("alerts exactly as expected", r.alertProblems(s))
	check("audit log verifies, every event exactly once", r.auditProblems(s))
	check("memory did not grow after warm-up", s.memoryProblems(append(r.names("nats"), r.names("service")...), r.restartedAfter()))
	var violations []string
	for _, name := range slices.Sorted(maps.Keys(r.specs)) {
		b, _ := os.ReadFile(filepath.Join(r.out, "logs", name+".log"))
		violations = append(violations, permissionViolations(map[string]string{name: string(b)})...)
	}
	check("no NATS permissions violation", violations)

	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.out, "summary.json"), append(b, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.out, "soak.svg"), plotSoak(s), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("soak: %s", s.headline())
	for _, c := range s.Checks {
		mark := "ok  "
		if !c.OK {
			mark = "FAIL"
		}
		t.Logf("%s %s", mark, c.Name)
		for _, p := range c.Problems[:min(len(c.Problems), 10)] {
			t.Logf("       %s", p)
		}
		if !c.OK {
			t.Fail()
		}
	}
	t.Logf("summary: %s, plot: %s", filepath.Join(r.out, "summary.json"), filepath.Join(r.out, "soak.svg"))
}

// restartedAfter names the processes restarted by a fault, with when.
func (r *soakRun) restartedAfter() map[string]time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.restarted)
}

// allReady reports the services not ready (for the standby auditor: not
// healthy) now, after the last fault.
func (r *soakRun) allReady() []string {
	var problems []string
	for _, name := range append(r.names("nats"), r.names("service")...) {
		resp, err := http.Get(r.specs[name].ready)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			problems = append(problems, fmt.Sprintf("%s: %s answered %d", name, r.specs[name].ready, resp.StatusCode))
		}
	}
	return problems
}

// alertProblems waits up to a minute for the expected alerts at the
// receiver, each notification counted once (a retry keeps its id):
//   - every VM's standing configuration finding (the simulated fleet's
//     disks use platform-managed keys) sent once;
//   - for every tampered VM a firing;
//   - the drifted VM's boot-diagnostics finding fired and then resolved;
//   - no other alert about a healthy VM, none about no VM (but a
//     schedule's missed deadline within two intervals of a fault), and
//     no condition sent twice in the same state.
//
// Alerts raised after the simulated fleet stopped (its VMs going stale)
// are not counted.
func (r *soakRun) alertProblems(s *soakSummary) []string {
	expected := func() []string {
		var problems []string
		firing, pmk := map[string]bool{}, map[string]int{}
		sent := map[string]int{}
		seen := map[string]bool{}
		var evs []sink.CloudEvent
		all, err := os.ReadFile(filepath.Join(r.out, "logs", "receive.log"))
		if err != nil {
			return []string{err.Error()}
		}
		for _, ev := range received(string(all)) {
			if seen[ev.ID] {
				continue // a retry of a notification
			}
			seen[ev.ID] = true
			evs = append(evs, ev)
			for _, a := range append([]events.Alert{ev.Data.Alert}, ev.Data.Digest...) {
				if a.At.After(s.end) {
					// The simulated fleet has stopped: its VMs go stale.
					continue
				}
				vm := a.VMKey
				sent[a.VMKey+" "+a.Key+" "+a.Code+" "+string(ev.Data.State)]++
				switch {
				case a.Code == "schedule.deadline_missed" && s.afterFault(a.At):
					// A fault delays the schedule: said, and healed.
				case vm == "":
					problems = append(problems, fmt.Sprintf("unexpected alert %s about no VM: %s", a.Code, a.Message))
				case a.Code == soakStandingFinding && ev.Data.State == sink.Firing:
					pmk[vm]++
				case s.Sim.Tampered[vm] != "" || slices.Contains(s.Sim.Deleted, vm) || slices.Contains(s.Sim.Drifted, vm):
					if ev.Data.State == sink.Firing {
						firing[vm] = true
					}
				default:
					problems = append(problems, fmt.Sprintf("unexpected alert %s (%s) about healthy VM %s: %s", a.Code, ev.Data.State, vm, a.Message))
				}
			}
		}
		for what, n := range sent {
			if n > 1 {
				problems = append(problems, fmt.Sprintf("sent %d times: %s", n, what))
			}
		}
		if len(pmk) != s.VMs {
			problems = append(problems, fmt.Sprintf("%s sent for %d VMs, want all %d", soakStandingFinding, len(pmk), s.VMs))
		}
		for vm, f := range s.Sim.Tampered {
			if !firing[vm] {
				problems = append(problems, fmt.Sprintf("no alert for tampered VM %s (%s)", vm, f))
			}
		}
		for _, vm := range s.Sim.Drifted {
			if why, ok := firedAndResolved(evs, events.AlertKey(vm, "config.boot_diagnostics.screenshots")); !ok {
				problems = append(problems, fmt.Sprintf("drifted VM %s: %s", vm, why))
			}
		}
		s.Alerts = len(evs)
		sort.Strings(problems)
		return problems
	}
	deadline := time.Now().Add(time.Minute)
	for {
		p := expected()
		if len(p) == 0 || time.Now().After(deadline) {
			return p
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// soakStandingFinding is the configuration finding every simulated VM
// has from the start: its disk is encrypted with a platform-managed key.
const soakStandingFinding = "config.disk_encryption.platform_managed_key"

// auditProblems stops the services that publish, waits for the auditor
// to log the whole of VIGIL_EVENTS, stops the auditors and checks the
// log: it verifies (`vigil audit verify`), and holds each of the
// stream's messages exactly once, with no gap.
func (r *soakRun) auditProblems(s *soakSummary) []string {
	t := r.t
	for _, name := range r.names("service") {
		if !strings.HasPrefix(name, "auditor-") {
			r.proc(name).stop(t)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	conn := r.adminConn(ctx)
	defer func() { _ = conn.Close() }()
	st, err := conn.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		return []string{fmt.Sprintf("stream %s: %v", events.StreamEvents, err)}
	}
	info, err := st.Info(ctx)
	if err != nil {
		return []string{fmt.Sprintf("stream %s: %v", events.StreamEvents, err)}
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	s.AuditedEvents = last
	v, err := auditlog.LoadVerifier(r.auditPub)
	if err != nil {
		return []string{err.Error()}
	}
	dir, err := auditlog.OpenDir(filepath.Join(r.auditDir, "log"))
	if err != nil {
		return []string{err.Error()}
	}
	verifier := auditlog.NewVerifier(dir, v)
	seen := map[uint64]int{}
	var problems []string
	for {
		_, err := verifier.Update(ctx, func(_ uint64, rec *auditlog.Record) error {
			switch {
			case rec.Stream != events.StreamEvents:
				problems = append(problems, fmt.Sprintf("an entry of stream %q", rec.Stream))
			case rec.FirstSeq != 0:
				problems = append(problems, fmt.Sprintf("a gap: sequences %d to %d", rec.FirstSeq, rec.Seq))
			default:
				seen[rec.Seq]++
			}
			return nil
		})
		if err != nil {
			problems = append(problems, fmt.Sprintf("the log does not verify: %v", err))
			break
		}
		if cp, ok := verifier.Checkpoint(); ok && cp.Size >= last-first+1 {
			break
		}
		if ctx.Err() != nil {
			cp, _ := verifier.Checkpoint()
			problems = append(problems, fmt.Sprintf("the log holds %d entries, the stream %d messages", cp.Size, last-first+1))
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, name := range r.names("service") {
		r.proc(name).stop(t)
	}
	if first != 1 {
		problems = append(problems, fmt.Sprintf("the stream's first message is %d: earlier ones were removed", first))
	}
	for seq := first; seq <= last; seq++ {
		switch n := seen[seq]; {
		case n == 0:
			problems = append(problems, fmt.Sprintf("message %d is not in the log", seq))
		case n > 1:
			problems = append(problems, fmt.Sprintf("message %d is in the log %d times", seq, n))
		}
		if len(problems) > 20 {
			break
		}
	}
	out, err := exec.Command(r.b("vigil"), "audit", "verify", "--log", filepath.Join(r.auditDir, "log"), "--key", r.auditPub).CombinedOutput()
	if err != nil {
		problems = append(problems, fmt.Sprintf("vigil audit verify: %v: %s", err, out))
	}
	s.AuditVerify = strings.TrimSpace(string(out))
	return problems
}

// front is the load balancer in front of a service's copies: each request
// goes to the next copy, and to the one after when a copy does not answer
// (it was killed), as Azure's front ends do for Event Grid and the
// enrollment API.
type front struct {
	backends []string
	mu       sync.Mutex
	next     int
}

func (f *front) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, err := io.ReadAll(io.LimitReader(req.Body, 4<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	first := f.next
	f.next++
	f.mu.Unlock()
	for i := range f.backends {
		b := f.backends[(first+i)%len(f.backends)]
		out, err := http.NewRequestWithContext(req.Context(), req.Method, "http://"+b+req.URL.RequestURI(), bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out.Header = req.Header.Clone()
		resp, err := http.DefaultClient.Do(out)
		if err != nil {
			continue // that copy is down: the next
		}
		for k, v := range resp.Header {
			w.Header()[k] = v
		}
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
		resp.Body.Close()
		return
	}
	http.Error(w, "no copy answered", http.StatusBadGateway)
}

// observer follows the verdicts on VIGIL_EVENTS.
type observer struct {
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time // VM key -> issue time of its last verdict
	first    map[string]time.Time
	maxGap   map[string]time.Duration
	statuses map[string]int
	total    int
	// The current window's verdicts and lateness (gap beyond the
	// interval) of each, and all lateness once every VM is onboarded.
	winCount int
	winLate  []time.Duration
	late     []time.Duration
}

func newObserver(interval time.Duration) *observer {
	return &observer{interval: interval, last: map[string]time.Time{}, first: map[string]time.Time{},
		maxGap: map[string]time.Duration{}, statuses: map[string]int{}}
}

// follow reads every verdict from the start of VIGIL_EVENTS until ctx
// ends, through node restarts (an ordered consumer recreates itself),
// pulled in batches.
func (o *observer) follow(ctx context.Context, conn *bus.Conn) error {
	cons, err := conn.JS.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{events.VerdictSubject("*")}})
	if err != nil {
		return err
	}
	var failed error
	var once sync.Once
	fail := func(err error) { once.Do(func() { failed = err }) }
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		e, err := events.Parse(msg.Data())
		if err != nil {
			fail(fmt.Errorf("verdict on %s: %w", msg.Subject(), err))
			return
		}
		var v events.Verdict
		if err := e.Decode(events.TypeVerdict, &v); err != nil {
			fail(fmt.Errorf("verdict on %s: %w", msg.Subject(), err))
			return
		}
		o.add(v)
	})
	if err != nil {
		return err
	}
	<-ctx.Done()
	cc.Stop()
	<-cc.Closed()
	if failed != nil {
		return failed
	}
	return ctx.Err()
}

func (o *observer) add(v events.Verdict) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.total++
	o.winCount++
	o.statuses[v.Status]++
	if prev, ok := o.last[v.VMKey]; ok {
		gap := v.IssuedAt.Sub(prev)
		o.maxGap[v.VMKey] = max(o.maxGap[v.VMKey], gap)
		late := max(0, gap-o.interval)
		o.winLate = append(o.winLate, late)
		o.late = append(o.late, late)
	} else {
		o.first[v.VMKey] = v.IssuedAt
	}
	if v.IssuedAt.After(o.last[v.VMKey]) {
		o.last[v.VMKey] = v.IssuedAt
	}
}

// window moves the window's figures into s and starts the next.
func (o *observer) window(s *sample) {
	o.mu.Lock()
	defer o.mu.Unlock()
	s.Verdicts = o.winCount
	s.LatenessP99S = percentile(o.winLate, 0.99).Seconds()
	s.LatenessMaxS = percentile(o.winLate, 1).Seconds()
	o.winCount, o.winLate = 0, nil
}
