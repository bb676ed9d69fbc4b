package attestworker

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// The pipeline benchmark's agents out of process: the test binary started
// again with envAgentFleet naming a fleetSpec file serves every VM's
// challenges, each agent on a connection of its own, as the agents on the
// VMs do. The benchmark's process then holds only the verifier's side (the
// NATS server and the worker), so that its CPU is what a deployment spends
// on attestation, without the guests' share.

// envAgentFleet names the spec file of a child process that is an agent
// fleet rather than a test run.
const envAgentFleet = "VIGIL_BENCH_AGENT_FLEET"

// fleetSpec is what an agent fleet process serves.
type fleetSpec struct {
	URL      string   `json:"url"`
	Platform string   `json:"platform"`
	VMIDs    []string `json:"vm_ids"`
	// Answers is where the fleet writes every answer it gave once its
	// standard input closes, for the bare verification of the same
	// bundles.
	Answers string `json:"answers"`
}

// fleetAnswer is one answer of the fleet.
type fleetAnswer struct {
	VMID  string `json:"vm_id"`
	VMKey string `json:"vm_key"`
	Nonce []byte `json:"nonce"`
	Raw   []byte `json:"raw"`
}

func TestMain(m *testing.M) {
	if spec := os.Getenv(envAgentFleet); spec != "" {
		if err := runAgentFleet(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "agent fleet:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runAgentFleet serves the challenges of the VMs of the spec in path
// (simulated by the same authority as the tests', so their evidence
// verifies against its roots), says "ready" on out once every agent
// listens, and when in closes writes the answers and returns.
func runAgentFleet(path string, in io.Reader, out io.Writer) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec fleetSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return err
	}
	auth := testAuthority()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu      sync.Mutex
		answers = make([]fleetAnswer, 0, len(spec.VMIDs))
	)
	for _, id := range spec.VMIDs {
		v, err := auth.NewVM(sim.VMConfig{Platform: spec.Platform, AK: sim.AKECDSAP256, VMID: id})
		if err != nil {
			return err
		}
		conn, err := bus.Connect(ctx, bus.Config{URL: spec.URL, Name: "agent " + v.VMKey()})
		if err != nil {
			return err
		}
		defer func() { _ = conn.Close() }()
		_, err = conn.Serve(ctx, events.ChallengeSubject(v.VMKey()), "", answering(v, func(bb benchBundle) {
			mu.Lock()
			answers = append(answers, fleetAnswer{VMID: bb.vmID, VMKey: bb.vmKey, Nonce: bb.nonce, Raw: bb.raw})
			mu.Unlock()
		}))
		if err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(out, "ready"); err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, in) // until the benchmark is done
	mu.Lock()
	defer mu.Unlock()
	raw, err = json.Marshal(answers)
	if err != nil {
		return err
	}
	return os.WriteFile(spec.Answers, raw, 0o600)
}

// answering is a simulated agent's challenge handler for v: it answers
// with v's evidence for the challenge's nonce and hands every answer to
// keep.
func answering(v *sim.VM, keep func(benchBundle)) func(context.Context, []byte) ([]byte, error) {
	return func(_ context.Context, data []byte) ([]byte, error) {
		var ch events.Challenge
		if err := json.Unmarshal(data, &ch); err != nil {
			return nil, err
		}
		raw, err := v.Respond(ch.Nonce)
		if err == nil {
			keep(benchBundle{raw: raw, nonce: ch.Nonce, vmID: v.VMID(), vmKey: v.VMKey()})
		}
		return raw, err
	}
}

// agentFleet is a running agent fleet process.
type agentFleet struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	answers string
}

// startAgentFleet starts the agents of vms in a process of their own and
// waits until every one listens.
func startAgentFleet(tb testing.TB, url, platform string, vms []*sim.VM) *agentFleet {
	tb.Helper()
	dir := tb.TempDir()
	spec := fleetSpec{URL: url, Platform: platform, Answers: dir + "/answers.json"}
	for _, v := range vms {
		spec.VMIDs = append(spec.VMIDs, v.VMID())
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		tb.Fatal(err)
	}
	path := dir + "/fleet.json"
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		tb.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envAgentFleet+"="+path)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	f := &agentFleet{cmd: cmd, stdin: stdin, answers: spec.Answers}
	tb.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan error, 1)
	go func() {
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err == nil && line != "ready\n" {
			err = fmt.Errorf("said %q", line)
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			tb.Fatalf("agent fleet not ready: %v", err)
		}
	case <-time.After(5 * time.Minute):
		tb.Fatal("agent fleet not ready within 5 minutes")
	}
	return f
}

// finish ends the fleet and returns every answer it gave.
func (f *agentFleet) finish(tb testing.TB) []benchBundle {
	tb.Helper()
	_ = f.stdin.Close()
	if err := f.cmd.Wait(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		tb.Fatalf("agent fleet: %v", err)
	}
	raw, err := os.ReadFile(f.answers)
	if err != nil {
		tb.Fatal(err)
	}
	var answers []fleetAnswer
	if err := json.Unmarshal(raw, &answers); err != nil {
		tb.Fatal(err)
	}
	out := make([]benchBundle, len(answers))
	for i, a := range answers {
		out[i] = benchBundle{raw: a.Raw, nonce: a.Nonce, vmID: a.VMID, vmKey: a.VMKey}
	}
	return out
}
