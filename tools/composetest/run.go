package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/compose-spec/compose-go/v2/types"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
)

// Published addresses of the compose file (bound to 127.0.0.1).
const (
	natsURL    = "nats://127.0.0.1:4222"
	webhookURL = "http://127.0.0.1:8080/eventgrid"
	auditURL   = "http://127.0.0.1:8083/log/checkpoint"
)

// stack is one run's compose project.
type stack struct {
	*compose
	p       *types.Project
	work    string
	vigil   string // the host-built vigil CLI
	logf    func(string, ...any)
	vms     int
	secret  string
	images  map[string]string // test image of each service
	down    string            // a service stopped on purpose (cluster faults)
	started time.Time
	running bool // every service ran after up: a stop now is not a start failing
}

func run(ctx context.Context, o options, logf func(string, ...any)) (string, error) {
	cmd, err := findCompose(ctx)
	if err != nil {
		return "", err
	}
	root, err := filepath.Abs(o.root)
	if err != nil {
		return "", err
	}
	var files []string
	for _, f := range o.files {
		files = append(files, filepath.Join(root, f))
	}
	work, err := os.MkdirTemp("", "vigil-compose-test-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)
	id := runID()
	secret := "ct-" + runID() + runID()
	env := map[string]string{"VIGIL_WEBHOOK_SECRET": secret}
	p, err := loadProject(ctx, files, env)
	if err != nil {
		return "", err
	}
	s := &stack{p: p, work: work, logf: logf, secret: secret, vigil: filepath.Join(work, "bin", "vigil")}
	if s.vms, err = simVMs(p); err != nil {
		return "", err
	}
	if err := portsFree(p); err != nil {
		return "", err
	}
	logf("building the programs and test images")
	images, err := buildImages(ctx, p, root, work, id, logf)
	if err != nil {
		return "", err
	}
	// Always remove what this run made, even when it fails or is stopped.
	defer func() {
		if o.keep {
			logf("left running: project vigil-ct-%s", id)
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if _, err := s.run(cctx, "down", "-v", "--remove-orphans", "-t", "5"); err != nil {
			logf("cleanup: %v", err)
		}
		if _, err := docker(cctx, append([]string{"rmi", "-f"}, slices.Compact(slices.Sorted(maps.Values(images)))...)...); err != nil {
			logf("cleanup: %v", err)
		}
	}()
	ov := filepath.Join(work, "override.yaml")
	if err := os.WriteFile(ov, []byte(override(images, o.breakEnv)), 0o644); err != nil {
		return "", err
	}
	s.images = images
	s.compose = &compose{cmd: cmd, project: "vigil-ct-" + id, files: append(files, ov),
		env: []string{"VIGIL_WEBHOOK_SECRET=" + secret}}

	// 1. Up, attested, tamper scenario revoked and alerted, nothing else.
	if err := s.up(ctx); err != nil {
		return "", err
	}
	conn, err := s.connect(ctx)
	if err != nil {
		return "", err
	}
	fleet, err := s.waitFleet(ctx, conn)
	var cluster string
	if err == nil && o.cluster {
		cluster, err = s.clusterFaults(ctx, conn)
	}
	conn.Close()
	if err != nil {
		return "", err
	}
	// 2. The webhook refuses unauthenticated deliveries; the console
	// answers only with its token.
	refused, err := webhookRefuses(ctx)
	if err != nil {
		return "", err
	}
	console, err := s.consoleAnswers(ctx)
	if err != nil {
		return "", err
	}
	// 3. Down: the audit log in its volume verifies; up again keeps it and
	// the NATS state; down again: the log grew, consistent with the first,
	// each event once.
	first, err := s.downAndVerify(ctx, "")
	if err != nil {
		return "", err
	}
	if err := s.up(ctx); err != nil {
		return "", fmt.Errorf("after down: %w", err)
	}
	kept, err := s.checkKept(ctx, first)
	if err != nil {
		return "", err
	}
	second, err := s.downAndVerify(ctx, filepath.Join(work, "audit-1", "log", "checkpoint"))
	if err != nil {
		return "", fmt.Errorf("after down and up: %w", err)
	}
	if second.Size <= first.Size || second.LastSeq < first.LastSeq {
		return "", fmt.Errorf("after down and up the log has %d entries (stream sequences 1..%d), before %d (1..%d)",
			second.Size, second.LastSeq, first.Size, first.LastSeq)
	}
	line := fmt.Sprintf("%s; webhook without its secret refused (%d); audit log verified (%d entries, stream sequences 1..%d each once); down and up kept %s, then the log verified consistent with the first checkpoint (%d entries, 1..%d each once)",
		fleet, refused, first.Size, first.LastSeq, kept, second.Size, second.LastSeq)
	if console != "" {
		line += "; " + console
	}
	if cluster != "" {
		line += "; cluster: " + cluster
	}
	return line, nil
}

// simVMs is the size of the simulated fleet (sim run --vms).
func simVMs(p *types.Project) (int, error) {
	svc, ok := p.Services["sim"]
	if !ok {
		return 0, errors.New("the compose file has no sim service")
	}
	cmd := []string(svc.Command)
	if i := slices.Index(cmd, "--vms"); i >= 0 && i+1 < len(cmd) {
		return strconv.Atoi(cmd[i+1])
	}
	return 20, nil // fleet.Config's default
}

// up starts the project and waits until every one-shot service has
// completed and every other one runs.
func (s *stack) up(ctx context.Context) error {
	s.logf("starting %s", s.project)
	s.started = time.Now()
	s.running = false
	if _, err := s.run(ctx, "up", "-d", "--no-build"); err != nil {
		// A one-shot service that failed stops up: say which.
		if bad := s.failed(ctx); bad != nil {
			return bad
		}
		return err
	}
	if err := s.waitRunning(ctx, time.Minute); err != nil {
		return err
	}
	s.running = true
	return nil
}

// failed describes the first container that stopped when it should not
// have (a one-shot service with an error, any other service at all, even
// one its restart policy brought back), with the end of its output, or is
// nil.
func (s *stack) failed(ctx context.Context) error {
	cs, err := s.containers(ctx)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if c.Service == s.down {
			continue
		}
		bad := c.Status == "exited" || c.Status == "dead" || c.Status == "restarting" || c.Restarts > 0
		if isOneShot(c.Service) {
			bad = (c.Status == "exited" && c.ExitCode != 0) || c.Status == "dead"
		}
		if !bad {
			continue
		}
		what := "cannot start"
		if s.running {
			what = "stopped while the stack ran"
		}
		restarted := ""
		if c.Restarts > 0 {
			restarted = fmt.Sprintf(" (restarted %d times by its restart policy)", c.Restarts)
		}
		return fmt.Errorf("service %s %s: container %s%s, exit code %d; its last output:\n%s",
			c.Service, what, c.Status, restarted, c.ExitCode, logs(ctx, c.ID, 15))
	}
	return nil
}

// waitRunning waits until every service of the project runs (one-shots:
// completed), failing at once when one stops, then watches for stable
// seconds that none stops (a service that exits on a bad setting does so
// within them).
func (s *stack) waitRunning(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	const stable = 5 * time.Second
	var since time.Time
	for {
		if err := s.failed(ctx); err != nil {
			return err
		}
		cs, err := s.containers(ctx)
		if err != nil {
			return err
		}
		running := map[string]bool{}
		for _, c := range cs {
			if c.Status == "running" || (isOneShot(c.Service) && c.Status == "exited") {
				running[c.Service] = true
			}
		}
		var missing []string
		for _, n := range serviceNames(s.p) {
			if !running[n] {
				missing = append(missing, n)
			}
		}
		switch {
		case len(missing) > 0:
			since = time.Time{}
		case since.IsZero():
			since = time.Now()
		case time.Since(since) >= stable:
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s these services do not run: %v", within, missing)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// adminFiles copies the administrator's credentials and the CA out of the
// auth-admin volume, as a user would to use the vigil CLI on the host.
func (s *stack) adminFiles(ctx context.Context) (creds, ca string, err error) {
	dir := filepath.Join(s.work, "admin")
	if err := os.RemoveAll(dir); err != nil {
		return "", "", err
	}
	initID, err := s.containerOf(ctx, "auth-init")
	if err != nil {
		return "", "", err
	}
	if _, err := docker(ctx, "cp", initID+":/vigil-auth/export/admin/.", dir); err != nil {
		return "", "", err
	}
	return filepath.Join(dir, busauth.CredsFile(busauth.Admin)), filepath.Join(dir, "tls", "ca.pem"), nil
}

// connect connects to the published NATS port as the administrator, over
// TLS.
func (s *stack) connect(ctx context.Context) (*bus.Conn, error) {
	creds, ca, err := s.adminFiles(ctx)
	if err != nil {
		return nil, err
	}
	c, err := busauth.ReadCreds(creds)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := bus.Connect(cctx, bus.Config{URL: natsURL, Name: "composetest", CredsFile: creds, TLSCAFile: ca, InboxPrefix: c.InboxPrefix})
	if err != nil {
		return nil, fmt.Errorf("connect to %s as the administrator over TLS: %w", natsURL, err)
	}
	return conn, nil
}

// waitFleet waits until the fleet is attested and the tamper scenario's
// VMs are revoked and alerted, failing at once on a falsely revoked VM or
// a stopped service.
func (s *stack) waitFleet(ctx context.Context, conn *bus.Conn) (string, error) {
	want := fleetExpect(s.vms)
	deadline := time.Now().Add(4 * time.Minute)
	var last string
	for {
		if err := s.failed(ctx); err != nil {
			return "", err
		}
		st, err := readFleet(ctx, conn.JS)
		if err == nil {
			var done bool
			done, last, err = st.judge(s.vms, want)
			if err != nil {
				return "", err
			}
			if done {
				return fmt.Sprintf("%s (%s after start)", last, time.Since(s.started).Round(time.Second)), nil
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the fleet did not reach the tamper scenario's state (%d VMs attested, at least %d untrusted, revoked and alerted): %s", s.vms, want, last)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w: %s", ctx.Err(), last)
		case <-time.After(2 * time.Second):
		}
	}
}

// webhookRefuses posts to the webhook without its secret and with a wrong
// one: both must be refused.
func webhookRefuses(ctx context.Context) (int, error) {
	var status int
	for _, u := range []string{webhookURL, webhookURL + "?secret=wrong"} {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(`[]`))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, fmt.Errorf("webhook: %w", err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized && resp.StatusCode != http.StatusForbidden {
			return 0, fmt.Errorf("the webhook answered %s to a delivery without its secret (%s)", resp.Status, u)
		}
		status = resp.StatusCode
	}
	return status, nil
}

// report is the part of vigil audit verify --json read here.
type report struct {
	Size    uint64 `json:"size"`
	LastSeq uint64 `json:"last_seq"`
	Gaps    uint64 `json:"gaps"`
}

// downAndVerify stops the project (keeping its volumes), copies the audit
// log out of its volume and verifies it with vigil audit verify (with
// trusted, a checkpoint saved earlier, when given).
func (s *stack) downAndVerify(ctx context.Context, trusted string) (report, error) {
	if _, err := s.run(ctx, "down", "-t", "10"); err != nil {
		return report{}, err
	}
	n := 1
	if trusted != "" {
		n = 2
	}
	dir := filepath.Join(s.work, fmt.Sprintf("audit-%d", n))
	// A container that is never started mounts the volume for docker cp.
	id, err := docker(ctx, "create", "-v", s.project+"_audit:/audit", "-v", s.project+"_audit-key:/audit-key", s.images["auditor"])
	if err != nil {
		return report{}, err
	}
	id = strings.TrimSpace(id)
	defer docker(context.WithoutCancel(ctx), "rm", "-f", id) //nolint:errcheck
	if _, err := docker(ctx, "cp", id+":/audit/.", dir); err != nil {
		return report{}, err
	}
	if _, err := docker(ctx, "cp", id+":/audit-key/signer.pub", filepath.Join(dir, "signer.pub")); err != nil {
		return report{}, err
	}
	args := []string{"audit", "verify", "--log", filepath.Join(dir, "log"), "--key", filepath.Join(dir, "signer.pub"), "--json"}
	if trusted != "" {
		args = append(args, "--trusted", trusted)
	}
	out, err := exec.CommandContext(ctx, s.vigil, args...).CombinedOutput()
	if err != nil {
		return report{}, fmt.Errorf("vigil audit verify: %w\n%s", err, out)
	}
	var r report
	if err := json.Unmarshal(out, &r); err != nil {
		return report{}, fmt.Errorf("vigil audit verify --json: %w\n%s", err, out)
	}
	if r.Gaps != 0 || r.Size == 0 {
		return report{}, fmt.Errorf("audit log: %d entries, %d gaps", r.Size, r.Gaps)
	}
	return r, nil
}

// checkKept checks, right after up, that NATS kept its state (the events
// stream goes on from where it was, the fleet's records are there) and
// waits until the auditor logs new events.
func (s *stack) checkKept(ctx context.Context, before report) (string, error) {
	conn, err := s.connect(ctx)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	var st *fleetState
	if err := retry(ctx, 2*time.Minute, func(ctx context.Context) (err error) {
		st, err = readFleet(ctx, conn.JS)
		return err
	}); err != nil {
		return "", err
	}
	if st.events < before.LastSeq {
		return "", fmt.Errorf("after down and up VIGIL_EVENTS ends at sequence %d, before at %d or later: NATS lost its state", st.events, before.LastSeq)
	}
	if len(st.status) < s.vms {
		return "", fmt.Errorf("after down and up vigil-status holds %d VMs, before %d", len(st.status), s.vms)
	}
	// The auditor goes on: its published checkpoint grows past what was
	// logged before.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		size, err := checkpointSize(ctx)
		if err == nil && size > before.Size {
			return fmt.Sprintf("the NATS state (events from sequence %d on, %d VMs) and the audit log (%d entries, then %d)", st.events, len(st.status), before.Size, size), nil
		}
		if err := s.failed(ctx); err != nil {
			return "", err
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("after down and up the auditor's checkpoint did not grow past %d entries (%d, %v)", before.Size, size, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// checkpointSize reads the tree size of the auditor's published
// checkpoint (its second line).
func checkpointSize(ctx context.Context) (uint64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, auditURL, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	lines := strings.Split(b.String(), "\n")
	if resp.StatusCode != http.StatusOK || len(lines) < 2 {
		return 0, fmt.Errorf("checkpoint: %s", resp.Status)
	}
	return strconv.ParseUint(lines[1], 10, 64)
}
