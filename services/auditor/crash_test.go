package auditor

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/service"
)

// Environment of an auditor child process (the test binary re-executed).
const (
	envChild      = "VIGIL_AUDITOR_TEST_CHILD"
	envLogDir     = "VIGIL_AUDITOR_TEST_LOG"
	envSigner     = "VIGIL_AUDITOR_TEST_SIGNER"
	envNATS       = "VIGIL_AUDITOR_TEST_NATS"
	envCrashAfter = "VIGIL_AUDITOR_TEST_CRASH_AFTER_BATCH"
	envBatchSize  = "VIGIL_AUDITOR_TEST_BATCH"
)

func TestMain(m *testing.M) {
	// Tessera logs through klog; keep test and benchmark output readable.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	if os.Getenv(envChild) == "1" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

// runChild runs one auditor until SIGTERM. With envCrashAfter=n it kills
// itself with SIGKILL right after its n-th batch became durable and before
// that batch is acknowledged: the narrowest crash window there is.
func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	cfg := Config{
		Options:            service.Options{NATS: bus.Config{URL: os.Getenv(envNATS)}, Logger: quietLogger()},
		LogDir:             os.Getenv(envLogDir),
		SignerKeyFile:      os.Getenv(envSigner),
		CheckpointInterval: 100 * time.Millisecond,
		OnRole:             func(r Role) { fmt.Println("role", r) },
	}
	if n, err := strconv.Atoi(os.Getenv(envBatchSize)); err == nil {
		cfg.BatchSize = n
	}
	var hk hooks
	if n, err := strconv.Atoi(os.Getenv(envCrashAfter)); err == nil && n > 0 {
		hk.afterDurable = func(batch int) {
			if batch == n {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	if err := run(ctx, cfg, hk); err != nil {
		fmt.Fprintln(os.Stderr, "auditor child:", err)
		return 1
	}
	return 0
}

// child is a running auditor child process.
type child struct {
	cmd    *exec.Cmd
	done   chan error
	writer chan struct{} // closed when it reports being the writer
}

// startChild runs an auditor child process on h's server, log and signer
// key, with extraEnv added to its environment.
func (h *harness) startChild(extraEnv ...string) *child {
	t := h.t
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envLogDir+"="+h.cfg.LogDir, envSigner+"="+h.cfg.SignerKeyFile, envNATS+"="+h.srv.URL())
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1), writer: make(chan struct{})}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "role writer" {
				close(c.writer)
			}
		}
		c.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-c.done
	})
	return c
}

// kill9 kills the child with SIGKILL and waits for it.
func (c *child) kill9(t *testing.T) {
	t.Helper()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	c.wait(t)
}

func (c *child) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-c.done:
		c.done <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatal("auditor child did not exit")
		return nil
	}
}

// TestExactlyOnceAcrossKill9 publishes events while auditor processes are
// killed with SIGKILL at random moments, and also exactly between an entry
// becoming durable and its acknowledgement; afterwards the log must hold
// every event exactly once, in stream order, and verify.
func TestExactlyOnceAcrossKill9(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	rng := rand.New(rand.NewPCG(seed, 0))
	t.Logf("seed %d", seed)
	h := newHarness(t)

	const total = 6000
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		for i := 0; i < total; i += 150 {
			h.publish(i, 150)
			// Spread the publishing over the rounds below, so that
			// auditors are killed while events keep arriving.
			time.Sleep(15 * time.Millisecond)
		}
	}()

	var trusted []byte
	killsInWindow := 0
	for round := range 12 {
		var env []string
		// Small batches make many durable/ack boundaries to crash at.
		env = append(env, envBatchSize+"="+strconv.Itoa(50+rng.IntN(400)))
		inWindow := round%3 == 2
		if inWindow {
			env = append(env, envCrashAfter+"="+strconv.Itoa(1+rng.IntN(3)))
		}
		c := h.startChild(env...)
		if inWindow {
			// It kills itself after a durable batch, unless it has nothing
			// to write; then it is killed like the others.
			select {
			case err := <-c.done:
				c.done <- err
				if err == nil || !strings.Contains(err.Error(), "killed") {
					t.Fatalf("auditor child ended with %v, want killed by its own SIGKILL", err)
				}
				killsInWindow++
			case <-time.After(time.Duration(300+rng.IntN(300)) * time.Millisecond):
				c.kill9(t)
			}
		} else {
			// The kill lands at a random moment of its work.
			time.Sleep(time.Duration(20+rng.IntN(350)) * time.Millisecond)
			c.kill9(t)
		}
		if round == 5 {
			trusted, _ = os.ReadFile(filepath.Join(h.cfg.LogDir, "checkpoint"))
		}
	}
	pubWG.Wait()
	if killsInWindow == 0 {
		t.Fatal("no auditor was killed between a durable write and its acknowledgement")
	}
	c := h.startChild()
	select {
	case <-c.writer:
	case <-time.After(30 * time.Second):
		t.Fatal("the last auditor did not become the writer")
	}
	l := h.log()
	waitFor(t, 60*time.Second, "checkpoint covering every event", func() bool { return l.size() >= total })
	h.waitAcked(total)
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	if err := c.wait(t); err != nil {
		t.Fatalf("auditor exit after SIGTERM: %v", err)
	}
	var opts [][]byte
	if len(trusted) > 0 {
		opts = append(opts, trusted)
	}
	recs, rep := h.records(opts...)
	checkExactlyOnce(t, recs, total)
	t.Logf("%d kills in the durable-to-ack window; %s", killsInWindow, rep)
}

// TestStandbyTakesOverWhenWriterDies runs a writer in a child process and
// a standby in this one; when the writer is killed the standby takes over
// and the log still holds every event exactly once.
func TestStandbyTakesOverWhenWriterDies(t *testing.T) {
	h := newHarness(t)

	writer := h.startChild()
	h.publish(0, 500)
	h.waitCheckpoint(500)

	roles := make(chan Role, 4)
	stop := h.start(func(c *Config) {
		c.LockPollInterval, c.OnRole = 20*time.Millisecond, func(r Role) { roles <- r }
	})
	select {
	case r := <-roles:
		if r != RoleStandby {
			t.Fatalf("second auditor became %s while the first holds the log", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second auditor reported no role")
	}
	// While the child logs 500 more events and publishes their checkpoint
	// (the standby polling the lock every 20 ms meanwhile), it keeps the
	// lock and the standby stays a standby.
	standbySince := time.Now()
	h.publish(500, 500)
	h.waitCheckpoint(1000)
	h.waitIdle()
	waitFor(t, 10*time.Second, "the checkpoint of 1000 entries published", func() bool {
		s, err := h.js.Stream(h.ctx, events.StreamCheckpoints)
		if err != nil {
			return false
		}
		m, err := s.GetLastMsgForSubject(h.ctx, events.SubjectCheckpoint)
		return err == nil && m.Header.Get("Vigil-Log-Size") == "1000"
	})
	select {
	case r := <-roles:
		t.Fatalf("standby became %s while the writer lives", r)
	default:
		t.Logf("the standby stayed one for %v while the writer logged 500 events", time.Since(standbySince))
	}
	holder, err := os.ReadFile(filepath.Join(h.cfg.LogDir, LockFileName))
	if err != nil {
		t.Fatal(err)
	}
	if want := "pid " + strconv.Itoa(writer.cmd.Process.Pid) + " "; !strings.HasPrefix(string(holder), want) {
		t.Fatalf("lock file %q, want the child (%s...) holding it", holder, want)
	}

	writer.kill9(t)
	killedAt := time.Now()
	select {
	case r := <-roles:
		if r != RoleWriter {
			t.Fatalf("standby became %s", r)
		}
		t.Logf("standby took over %v after the writer died", time.Since(killedAt))
	case <-time.After(10 * time.Second):
		t.Fatal("standby did not take over")
	}
	h.publish(1000, 500)
	h.waitCheckpoint(1500)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	recs, _ := h.records()
	checkExactlyOnce(t, recs, 1500)
}
