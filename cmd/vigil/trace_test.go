package main

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devenv"
	"github.com/vigil-cc/vigil/cmd/vigil/internal/fleet"
	"github.com/vigil-cc/vigil/pkg/natsembed"
	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// spanService names the Vigil service a span belongs to, from its
// instrumentation scope or, for the shared bus runner, from the consumer
// group that handled the message.
func spanService(s sdktrace.ReadOnlySpan) string {
	scope := s.InstrumentationScope().Name
	for _, svc := range []string{"ingest", "attest-worker", "keyguard", "auditor"} {
		if strings.Contains(scope, "/services/"+svc) {
			return svc
		}
	}
	for _, a := range s.Attributes() {
		if a.Key == "messaging.consumer.group.name" {
			g := a.Value.AsString()
			for _, svc := range []string{"ingest", "attest", "keyguard", "auditor"} {
				if strings.Contains(g, svc) {
					if svc == "attest" {
						return "attest-worker"
					}
					return svc
				}
			}
		}
	}
	return ""
}

// TestOneTracePerVMStory follows one VM: the trace that begins when ingest
// receives the VM's Event Grid event continues through attest-worker (job,
// challenge, verdict), keyguard (verdict appraisal) and auditor (log entry).
func TestOneTracePerVMStory(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs bytes.Buffer
	log := telemetry.Logger("vigil-dev", &logs, nil)
	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-dev", SetGlobal: true, SpanExporter: exp, NoRuntimeMetrics: true})
	if err != nil {
		t.Fatal(err)
	}
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	env, err := devenv.Start(ctx, devenv.Config{Listen: fmt.Sprintf("127.0.0.1:%d", port), DataDir: data, Logger: log, Telemetry: tel})
	if err != nil {
		t.Fatal(err)
	}
	o := &devOptions{httpAddr: "127.0.0.1:0", vms: 1, scenario: fleet.ScenarioNone, interval: time.Minute, grace: time.Minute, tamperAfter: time.Hour}
	d, err := newDevRun(ctx, env, o, data, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	vm := d.fleet.VMs()[0].Key
	runErr := make(chan error, 1)
	go func() { runErr <- env.Run(ctx, d.components()...) }()

	// Wait until the VM's verdict is in the audit log and keyguard has
	// appraised it.
	deadline := time.Now().Add(60 * time.Second)
	var story []sdktrace.ReadOnlySpan
	for {
		story = storyOf(exp.GetSpans().Snapshots(), vm)
		seen := map[string]bool{}
		for _, s := range story {
			seen[spanService(s)] = true
			for _, a := range s.Attributes() {
				if a.Key == "messaging.destination.name" || a.Key == "vigil.subject" {
					seen[spanService(s)+" "+s.Name()+" "+a.Value.AsString()] = true
				}
			}
		}
		want := []string{
			"ingest",
			"attest-worker process vigil.jobs.attest." + vm + " vigil.jobs.attest." + vm,
			" publish vigil.events.vm." + vm + ".verdict vigil.events.vm." + vm + ".verdict",
			"keyguard process vigil.events.vm." + vm + ".verdict vigil.events.vm." + vm + ".verdict",
			"auditor",
		}
		missing := 0
		for _, w := range want {
			if !seen[w] {
				missing++
			}
		}
		if missing == 0 && auditedVerdict(story, vm) {
			break
		}
		if time.Now().After(deadline) {
			var all strings.Builder
			for _, s := range exp.GetSpans().Snapshots() {
				fmt.Fprintf(&all, "%s %s parent=%v %s\n", s.SpanContext().TraceID().String()[:8], s.Name(), s.Parent().IsValid(), spanService(s))
			}
			t.Fatalf("the trace begun by ingest does not reach every service (seen %v):\n%s\nall spans:\n%s", seen, describeSpans(story), all.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	cancel()
	if err := <-runErr; err != nil {
		t.Fatal(err)
	}
	t.Logf("one trace, %d spans:\n%s", len(story), describeSpans(story))
}

// storyOf returns the spans of the trace whose root is ingest's receipt of
// the VM's first Event Grid delivery.
func storyOf(spans []sdktrace.ReadOnlySpan, vm string) []sdktrace.ReadOnlySpan {
	byTrace := map[trace.TraceID][]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byTrace[s.SpanContext().TraceID()] = append(byTrace[s.SpanContext().TraceID()], s)
	}
	var best []sdktrace.ReadOnlySpan
	for _, ss := range byTrace {
		rootIsIngest, mentionsVM := false, false
		for _, s := range ss {
			if !s.Parent().IsValid() && spanService(s) == "ingest" {
				rootIsIngest = true
			}
			for _, a := range s.Attributes() {
				if strings.Contains(a.Value.String(), vm) {
					mentionsVM = true
				}
			}
			if strings.Contains(s.Name(), vm) {
				mentionsVM = true
			}
		}
		if rootIsIngest && mentionsVM && len(ss) > len(best) {
			best = ss
		}
	}
	sort.Slice(best, func(i, j int) bool { return best[i].StartTime().Before(best[j].StartTime()) })
	return best
}

// auditedVerdict reports whether the auditor logged the VM's verdict within
// the story.
func auditedVerdict(story []sdktrace.ReadOnlySpan, vm string) bool {
	for _, s := range story {
		if spanService(s) != "auditor" {
			continue
		}
		for _, a := range s.Attributes() {
			if strings.Contains(a.Value.String(), "vigil.events.vm."+vm+".verdict") {
				return true
			}
		}
	}
	return false
}

func describeSpans(spans []sdktrace.ReadOnlySpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %-14s %-60s %s %v\n", spanService(s), s.Name(), s.InstrumentationScope().Name, s.Attributes())
	}
	return b.String()
}
