package sink_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// TestAlertmanagerReal delivers to a real Alertmanager v0.35 (its API,
// in-memory store and silences, built from its Go module by
// startAlertmanager): the alert shows active on /api/v2/alerts with the
// labels and annotations the sink sent and stays one alert when re-sent
// while firing; when its condition fires again with another code and
// severity (untrusted, then stale) the new alert replaces it; the resolve
// producers publish (vm.recovered, info, the same key) leaves none of the
// key's alerts active. A digest becomes one Alertmanager alert per entry,
// all resolved by the digest's resolve.
func TestAlertmanagerReal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs a real Alertmanager")
	}
	base := startAlertmanager(t)
	s, err := sink.New(sink.Spec{Protocol: "alertmanager", URL: base + "/", Settings: map[string]string{"tag_labels": "env"}}, devClient())
	if err != nil {
		t.Fatal(err)
	}

	n := firing()
	n.Alert.At = time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	n.Time = time.Now()
	want := sink.AlertmanagerAlertsOf(n, []string{"env"}, time.Now())[0]
	filter := `vigil_key="` + n.Key + `"`
	for range 2 { // re-sent while firing: still one alert
		if err := s.Deliver(t.Context(), n); err != nil {
			t.Fatalf("Deliver firing: %v", err)
		}
	}
	got := waitAlerts(t, base, filter, func(as []amAlert) bool { return len(as) == 1 && as[0].Status.State == "active" })[0]
	if !reflect.DeepEqual(got.Labels, want.Labels) {
		t.Errorf("Alertmanager's labels %v, want %v", got.Labels, want.Labels)
	}
	if got.Annotations["summary"] != "vm.untrusted on web-01" || got.Annotations["description"] != n.Alert.Message {
		t.Errorf("annotations %v", got.Annotations)
	}
	if !got.StartsAt.Equal(n.Alert.At) || !got.EndsAt.After(time.Now()) || got.GeneratorURL != n.ConsoleURL {
		t.Errorf("startsAt %v endsAt %v generatorURL %q; want startsAt %v, endsAt in the future", got.StartsAt, got.EndsAt, got.GeneratorURL, n.Alert.At)
	}

	stale := n
	stale.ID = "alert-stale"
	stale.Alert.Severity, stale.Alert.Code = events.SeverityHigh, "vm.stale"
	stale.Alert.At = time.Now().UTC().Truncate(time.Millisecond)
	if err := s.Deliver(t.Context(), stale); err != nil {
		t.Fatalf("Deliver stale: %v", err)
	}
	waitAlerts(t, base, filter, func(as []amAlert) bool {
		return len(as) == 1 && as[0].Labels["alertname"] == "vm.stale" && as[0].Labels["severity"] == "high"
	})

	r := recovered()
	r.Time = time.Now()
	r.Alert.At = r.Time
	if err := s.Deliver(t.Context(), r); err != nil {
		t.Fatalf("Deliver resolved: %v", err)
	}
	waitAlerts(t, base, filter, func(as []amAlert) bool { return len(as) == 0 })
	// Resolving what is no longer there is no error.
	if err := s.Deliver(t.Context(), r); err != nil {
		t.Fatalf("Deliver resolved again: %v", err)
	}

	d := digest(3)
	for i := range d.Digest {
		d.Digest[i].At = time.Now().Add(-time.Minute).UTC().Truncate(time.Millisecond)
	}
	d.Alert = d.Digest[0]
	d.Key = d.Alert.Key
	if err := s.Deliver(t.Context(), d); err != nil {
		t.Fatalf("Deliver digest: %v", err)
	}
	dfilter := fmt.Sprintf(`vm=~"%s|%s|%s"`, d.Digest[0].VMKey, d.Digest[1].VMKey, d.Digest[2].VMKey)
	waitAlerts(t, base, dfilter, func(as []amAlert) bool { return len(as) == 3 })
	d.State = sink.Resolved
	d.Time = time.Now()
	if err := s.Deliver(t.Context(), d); err != nil {
		t.Fatalf("Deliver resolved digest: %v", err)
	}
	waitAlerts(t, base, dfilter, func(as []amAlert) bool { return len(as) == 0 })
}

// amAlert is Alertmanager's gettableAlert, the fields the test reads.
type amAlert struct {
	Labels       map[string]string `json:"labels"`
	Annotations  map[string]string `json:"annotations"`
	StartsAt     time.Time         `json:"startsAt"`
	EndsAt       time.Time         `json:"endsAt"`
	GeneratorURL string            `json:"generatorURL"`
	Fingerprint  string            `json:"fingerprint"`
	Status       struct {
		State string `json:"state"`
	} `json:"status"`
}

// waitAlerts polls GET /api/v2/alerts (every state: active, silenced,
// inhibited, unprocessed) with filter until ok holds, for at most 30 s.
func waitAlerts(t *testing.T, base, filter string, ok func([]amAlert) bool) []amAlert {
	t.Helper()
	q := url.Values{"filter": {filter}, "active": {"true"}, "silenced": {"true"}, "inhibited": {"true"}, "unprocessed": {"true"}}
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last []amAlert
	for {
		resp, err := http.Get(base + "/api/v2/alerts?" + q.Encode())
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET /api/v2/alerts: %s: %s", resp.Status, body)
		}
		last = nil
		if err := json.Unmarshal(body, &last); err != nil {
			t.Fatalf("GET /api/v2/alerts: %v: %s", err, body)
		}
		if ok(last) {
			return last
		}
		if time.Now().After(deadline) {
			t.Fatalf("Alertmanager's alerts matching %s never reached the state wanted; last: %+v", filter, last)
		}
		<-tick.C
	}
}

// startAlertmanager builds testdata/alertmanager (a module of its own, out
// of the workspace: Alertmanager v0.35's API and stores) into a temporary
// directory, runs it and returns its base URL. It stops when the test ends.
func startAlertmanager(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build Alertmanager with")
	}
	bin := filepath.Join(t.TempDir(), "alertmanager")
	build := exec.CommandContext(t.Context(), goBin, "build", "-o", bin, ".")
	build.Dir = filepath.Join("testdata", "alertmanager")
	build.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0", "GOFLAGS=-mod=readonly -buildvcs=false")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building Alertmanager: %v\n%s", err, out)
	}

	cmd := exec.Command(bin)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		stdin.Close() // it exits when its standard input closes
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("Alertmanager's log:\n%s", stderr.String())
		}
	})
	addr := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(strings.TrimPrefix(line, "listening on "))
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case a := <-addr:
		if a == "" {
			<-exited // its output is all in stderr then
			t.Fatalf("Alertmanager did not start: %s", stderr.String())
		}
		return "http://" + a
	case <-exited:
		t.Fatalf("Alertmanager exited: %s", stderr.String())
	case <-time.After(30 * time.Second):
		t.Fatal("Alertmanager did not say where it listens within 30 s")
	}
	return ""
}
