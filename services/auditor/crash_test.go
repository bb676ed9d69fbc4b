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
	"github.com/vigil-cc/vigil/pkg/natstest"
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
	if n, err := strconv.Atoi(os.Getenv(envCrashAfter)); err == nil && n > 0 {
		cfg.afterDurable = func(batch int) {
			if batch == n {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {}
			}
		}
	}
	if err := Run(ctx, cfg); err != nil {
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

func startChild(t *testing.T, logDir, signer, natsURL string, extraEnv ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"=1", envLogDir+"="+logDir, envSigner+"="+signer, envNATS+"="+natsURL)
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
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	_, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")

	const total = 6000
	var pubWG sync.WaitGroup
	pubWG.Add(1)
	go func() {
		defer pubWG.Done()
		for i := 0; i < total; i += 150 {
			publishEvents(ctx, t, js, i, 150)
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
		c := startChild(t, logDir, skey, srv.URL(), env...)
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
			time.Sleep(time.Duration(20+rng.IntN(350)) * time.Millisecond)
			c.kill9(t)
		}
		if round == 5 {
			trusted, _ = os.ReadFile(filepath.Join(logDir, "checkpoint"))
		}
	}
	pubWG.Wait()
	if killsInWindow == 0 {
		t.Fatal("no auditor was killed between a durable write and its acknowledgement")
	}
	c := startChild(t, logDir, skey, srv.URL())
	select {
	case <-c.writer:
	case <-time.After(30 * time.Second):
		t.Fatal("the last auditor did not become the writer")
	}
	waitFor(t, 60*time.Second, "checkpoint covering every event", func() bool { return checkpointSize(logDir) >= total })
	cons, err := js.Consumer(ctx, events.StreamEvents, DefaultConsumer)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "every event acknowledged", func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.AckFloor.Stream == total
	})
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	if err := c.wait(t); err != nil {
		t.Fatalf("auditor exit after SIGTERM: %v", err)
	}
	var opts [][]byte
	if len(trusted) > 0 {
		opts = append(opts, trusted)
	}
	recs, rep := logRecords(t, logDir, vkey, opts...)
	checkExactlyOnce(t, recs, total)
	t.Logf("%d kills in the durable-to-ack window; %s", killsInWindow, rep)
}

// TestStandbyTakesOverWhenWriterDies runs a writer in a child process and
// a standby in this one; when the writer is killed the standby takes over
// and the log still holds every event exactly once.
func TestStandbyTakesOverWhenWriterDies(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv := natstest.Start(t)
	nc, js := srv.JetStream()
	dir := t.TempDir()
	skey, vkey := testKeys(t, dir)
	logDir := filepath.Join(dir, "log")

	writer := startChild(t, logDir, skey, srv.URL())
	publishEvents(ctx, t, js, 0, 500)
	waitFor(t, 30*time.Second, "the child writing the log", func() bool { return checkpointSize(logDir) >= 500 })

	roles := make(chan Role, 4)
	stop := startAuditor(t, Config{
		Options: service.Options{NATS: natsConfig(nc), Logger: quietLogger()}, LogDir: logDir, SignerKeyFile: skey, CheckpointInterval: 100 * time.Millisecond,
		LockPollInterval: 20 * time.Millisecond, OnRole: func(r Role) { roles <- r },
	})
	select {
	case r := <-roles:
		if r != RoleStandby {
			t.Fatalf("second auditor became %s while the first holds the log", r)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("second auditor reported no role")
	}
	publishEvents(ctx, t, js, 500, 500)
	select {
	case r := <-roles:
		t.Fatalf("standby became %s while the writer lives", r)
	case <-time.After(300 * time.Millisecond):
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
	publishEvents(ctx, t, js, 1000, 500)
	waitFor(t, 30*time.Second, "checkpoint covering every event", func() bool { return checkpointSize(logDir) >= 1500 })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	recs, _ := logRecords(t, logDir, vkey)
	checkExactlyOnce(t, recs, 1500)
}
