package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// runVigil runs the CLI with args and returns stdout, stderr and the error.
func runVigil(ctx context.Context, args ...string) (string, string, error) {
	var out, errb syncBuffer
	cmd := newRootCmd()
	cmd.SetArgs(args)
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	err := cmd.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

func publish(t *testing.T, js jetstream.JetStream, subject, typ string, data any) events.Envelope {
	t.Helper()
	env, err := events.New(typ, "test", events.VMFromSubject(subject), data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := env.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(context.Background(), subject, b, jetstream.WithMsgID(env.ID)); err != nil {
		t.Fatalf("publish %s: %v", subject, err)
	}
	return env
}

func parseLines(t *testing.T, out string) []events.Envelope {
	t.Helper()
	var envs []events.Envelope
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if line == "" {
			continue
		}
		env, err := events.Parse([]byte(line))
		if err != nil {
			t.Fatalf("output line is not a CloudEvent: %q: %v", line, err)
		}
		envs = append(envs, env)
	}
	return envs
}

func ids(envs []events.Envelope) []string {
	var s []string
	for _, e := range envs {
		s = append(s, e.ID)
	}
	return s
}

func lifecycle(vm string, i int) events.Lifecycle {
	return events.Lifecycle{VMKey: vm, Kind: events.LifecycleStarted, Origin: "test", ResourceID: fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i)}
}

func TestTailPrintsStoredEventsInOrder(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.JetStream()
	var want []string
	for i := range 5 {
		vm := events.VMKey(fmt.Sprintf("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm%d", i))
		want = append(want, publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, i)).ID)
	}
	// An alert lives in another stream and must not show up here.
	publish(t, js, events.AlertSubject(events.SeverityCritical, "fleet"), events.TypeAlert, events.Alert{Severity: events.SeverityCritical, Code: "test", Message: "x"})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, stderr, err := runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--count", "3")
	if err != nil {
		t.Fatalf("tail: %v (%s)", err, stderr)
	}
	if got := ids(parseLines(t, out)); strings.Join(got, ",") != strings.Join(want[:3], ",") {
		t.Fatalf("ids = %v, want %v", got, want[:3])
	}
	if strings.Count(out, "\n") != 3 {
		t.Fatalf("want exactly 3 lines:\n%s", out)
	}

	// No count: everything stored, then the timeout ends it with status 0.
	start := time.Now()
	out, _, err = runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--timeout", "500ms")
	if err != nil {
		t.Fatalf("tail --timeout: %v", err)
	}
	if el := time.Since(start); el < 500*time.Millisecond || el > 10*time.Second {
		t.Errorf("tail --timeout 500ms took %s", el)
	}
	if got := ids(parseLines(t, out)); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("ids = %v, want %v", got, want)
	}
}

func TestTailFollowsNewEvents(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.JetStream()
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/live")
	first := publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, 0))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, _, err := runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--count", "2", "--subject", "vigil.events.vm."+vm+".>")
		done <- result{out, err}
	}()
	time.Sleep(200 * time.Millisecond)
	second := publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, 1))
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	if got := ids(parseLines(t, r.out)); len(got) != 2 || got[0] != first.ID || got[1] != second.ID {
		t.Fatalf("ids = %v, want [%s %s]", got, first.ID, second.ID)
	}
}

func TestTailOtherStreams(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.JetStream()
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/other")
	ev := publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, 0))
	alert := publish(t, js, events.AlertSubject(events.SeverityHigh, vm), events.TypeAlert, events.Alert{Severity: events.SeverityHigh, VMKey: vm, Code: "vm.untrusted", Message: "untrusted"})
	job := publish(t, js, events.AttestJobSubject(vm), events.TypeJob, events.Job{VMKey: vm, Reason: "test"})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		subject string
		want    []string
	}{
		{"vigil.alert.>", []string{alert.ID}},
		{events.AttestJobSubject(vm), []string{job.ID}}, // work queue: the pending job
		{"vigil.>", []string{ev.ID, alert.ID, job.ID}},  // several streams at once
	}
	for _, tc := range tests {
		t.Run(tc.subject, func(t *testing.T) {
			out, stderr, err := runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--subject", tc.subject, "--count", fmt.Sprint(len(tc.want)), "--timeout", "10s")
			if err != nil {
				t.Fatalf("tail: %v (%s)", err, stderr)
			}
			got := ids(parseLines(t, out))
			if len(got) != len(tc.want) {
				t.Fatalf("ids = %v, want %v", got, tc.want)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("missing %s in %v", w, got)
				}
			}
		})
	}
	// Tailing the work queue consumed nothing.
	s, err := js.Stream(ctx, events.StreamJobs)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("VIGIL_JOBS after tail: %v msgs, err %v; want the job still pending", info.State.Msgs, err)
	}
}

func TestTailSkipsNonCloudEvents(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.JetStream()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, "vigil.events.policy.junk", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	good := publish(t, js, events.PolicySubject("default", "test"), events.TypePolicy, map[string]any{"name": "default"})
	out, stderr, err := runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--count", "1")
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(parseLines(t, out)); len(got) != 1 || got[0] != good.ID {
		t.Fatalf("ids = %v, want [%s]", got, good.ID)
	}
	if !strings.Contains(stderr, "skipping VIGIL_EVENTS message 1 on vigil.events.policy.junk") {
		t.Errorf("stderr does not report the skipped message: %q", stderr)
	}
}

func TestTailCannotConnect(t *testing.T) {
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("nats://127.0.0.1:%d", port)
	start := time.Now()
	_, _, err = runVigil(context.Background(), "events", "tail", "--nats-url", url, "--timeout", "1m")
	if err == nil {
		t.Fatal("tail succeeded without a server")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("took %s to give up", el)
	}
	if !strings.Contains(err.Error(), "cannot connect to NATS at "+url) {
		t.Errorf("error = %v", err)
	}
}

func TestTailUnprovisioned(t *testing.T) {
	ns := natstest.Start(t) // no streams
	_, _, err := runVigil(context.Background(), "events", "tail", "--nats-url", ns.URL(), "--timeout", "1m")
	if err == nil || !strings.Contains(err.Error(), `no stream stores subject "vigil.events.>"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestTailBadFlags(t *testing.T) {
	tests := [][]string{
		{"--count", "-1"},
		{"--timeout", "-1s"},
		{"--subject", "vigil..events"},
		{"--subject", "vigil.>.x"},
		{"--subject", "vigil.ev*"},
		{"--nats-cert", "c.pem"},
	}
	for _, args := range tests {
		_, _, err := runVigil(context.Background(), append([]string{"events", "tail", "--nats-url", "nats://127.0.0.1:1"}, args...)...)
		var ee *exitError
		if !errors.As(err, &ee) || ee.code != 2 {
			t.Errorf("%v: err = %v, want exit status 2", args, err)
		}
	}
}

func TestTailSurvivesServerRestart(t *testing.T) {
	ns := natstest.Start(t)
	_, js := ns.JetStream()
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/restart")
	first := publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, 0))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		out, stderr string
		err         error
	}
	done := make(chan result, 1)
	go func() {
		out, stderr, err := runVigil(ctx, "events", "tail", "--nats-url", ns.URL(), "--count", "2")
		done <- result{out, stderr, err}
	}()
	time.Sleep(300 * time.Millisecond)
	ns.Restart()
	_, js = ns.JetStream()
	second := publish(t, js, events.LifecycleSubject(vm), events.TypeLifecycle, lifecycle(vm, 1))
	r := <-done
	if r.err != nil {
		t.Fatalf("tail across a restart: %v (%s)", r.err, r.stderr)
	}
	if got := ids(parseLines(t, r.out)); len(got) != 2 || got[0] != first.ID || got[1] != second.ID {
		t.Fatalf("ids = %v, want [%s %s] (no loss, no repeat)", got, first.ID, second.ID)
	}
}

// A NATS URL with credentials (VIGIL_NATS_URL or --nats-url) shows up
// neither in --help, which prints flag defaults, nor in a connection error.
func TestNATSURLCredentialsNotShown(t *testing.T) {
	const secret = "s3cret-pass"
	t.Setenv("VIGIL_NATS_URL", "nats://alice:"+secret+"@127.0.0.1:1")
	for _, args := range [][]string{
		{"events", "tail", "--help"},
		{"keyguard", "grants", "--help"},
		{"events", "tail", "--count", "1", "--timeout", "1s"},
		{"events", "tail", "--count", "1", "--timeout", "1s", "--nats-url", "nats://" + secret + "@127.0.0.1:1"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		stdout, stderr, err := runVigil(ctx, args...)
		cancel()
		all := stdout + stderr
		if err != nil {
			all += err.Error()
		}
		if strings.Contains(all, secret) {
			t.Errorf("vigil %s shows the credential: %s", strings.Join(args, " "), all)
		}
	}
}
