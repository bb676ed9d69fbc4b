package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natsembed"
)

// screenshotDirEnv names a directory where the browser tests keep their
// screenshots (default: the test's temporary directory).
const screenshotDirEnv = "VIGIL_SCREENSHOTS"

// chromiumPath finds Debian's chromium; without it the browser tests skip,
// unless CI is set, where they fail.
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium); CI is set, so the browser tests may not skip")
	}
	t.Skip("chromium is not installed (apt-get install chromium): skipping the browser tests")
	return ""
}

// browser is a headless Chromium tab whose console errors are collected.
type browser struct {
	t      *testing.T
	ctx    context.Context
	dir    string
	mu     sync.Mutex
	errors []string
}

func newBrowser(t *testing.T) *browser {
	t.Helper()
	path := chromiumPath(t)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1400, 1000))
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	b := &browser{t: t, ctx: ctx, dir: os.Getenv(screenshotDirEnv)}
	if b.dir == "" {
		b.dir = t.TempDir()
	} else if err := os.MkdirAll(b.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The first Run starts the browser (without a deadline, which would
	// bound the browser's life); the console is followed from then on.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			if m.Type == chromedp.ConsoleError || m.IsException() {
				b.mu.Lock()
				b.errors = append(b.errors, m.String()+" at "+m.URL)
				b.mu.Unlock()
			}
		}
	}()
	return b
}

// do runs steps within d.
func (b *browser) do(d time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// wait polls a JavaScript predicate until it is true, for at most d.
func (b *browser) wait(d time.Duration, what, predicate string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, d+5*time.Second)
	defer cancel()
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](predicate, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText.slice(0, 3000) : ""`))
		b.t.Fatalf("%s: %v\npage:\n%s", what, err, html)
	}
}

// loadUntil loads url until the predicate holds on the page, for at most d
// (for what a page shows as of its load: it changes on the server).
func (b *browser) loadUntil(d time.Duration, url, what, predicate string) {
	b.t.Helper()
	deadline := time.Now().Add(d)
	for {
		b.do(10*time.Second, "load "+url, chromedp.Navigate(url))
		if eval[bool](b, predicate) {
			return
		}
		if time.Now().After(deadline) {
			b.t.Fatalf("%s: not within %s\npage:\n%s", what, d, eval[string](b, `document.body.innerText.slice(0, 3000)`))
		}
		// Pace the loads: the server's state moves on in its own time.
		b.wait(5*time.Second, "pace", `new Promise(r => setTimeout(() => r(true), 300))`)
	}
}

// screenshot saves the whole page as name.png.
func (b *browser) screenshot(name string) string {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	path := filepath.Join(b.dir, name+".png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot: %s", path)
	return path
}

// waitListening waits until the console answers at base.
func waitListening(t *testing.T, base string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		resp, err := http.Get(base + "/static/favicon.svg")
		if err == nil {
			resp.Body.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the console does not listen at %s: %v", base, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (b *browser) consoleErrors() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.errors...)
}

// TestConsoleBrowser runs the dev pipeline with the tamper scenario and its
// fleet console, and uses the console in headless Chromium: the page shows
// every VM; a tampered VM turns untrusted on the open page, without a
// reload, within 2 s of its verdict; filtering and paging work; a VM page
// shows its reason codes and a verified inclusion proof; the browser's
// console logs no errors. Screenshots of each page are kept
// ($VIGIL_SCREENSHOTS, else the test's temporary directory).
func TestConsoleBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the pipeline and a browser")
	}
	b := newBrowser(t)
	port, err := natsembed.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	const vms = 9
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	url, data, _ := startDev(t, "--console", fmt.Sprintf("127.0.0.1:%d", port), "--vms", fmt.Sprint(vms),
		"--interval", "4s", "--grace", "8s", "--tamper-after", "12s")

	// The verdicts as the bus stores them, to time the page against.
	_, js := credsConn(t, url, data, busauth.Console)
	var vmu sync.Mutex
	contraindicated := map[string]time.Time{} // VM key -> first contraindicated verdict stored
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	cons, err := js.OrderedConsumer(ctx, events.StreamEvents, jetstream.OrderedConsumerConfig{FilterSubjects: []string{"vigil.events.vm.*.verdict"}})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		env, err := events.Parse(m.Data())
		if err != nil {
			return
		}
		var v events.Verdict
		md, err := m.Metadata()
		if err != nil || env.Decode(events.TypeVerdict, &v) != nil || v.Status != events.VerdictContraindicated {
			return
		}
		vmu.Lock()
		if _, ok := contraindicated[v.VMKey]; !ok {
			contraindicated[v.VMKey] = md.Timestamp
		}
		vmu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)

	waitListening(t, base, 30*time.Second)
	// The page shows every VM, before the scenario spoils any.
	// (Rows update in place; a VM new to the index appears on the next
	// load, so load until ingest has reported all of them.)
	b.loadUntil(30*time.Second, base+"/", "every VM in the table", fmt.Sprintf(`document.querySelectorAll("#vms tbody tr").length === %d`, vms))
	// Note when each row turns untrusted, and that the page never reloads.
	b.do(5*time.Second, "watch the table", chromedp.Evaluate[chromedp.Void](`(() => {
		window.vigilNoReload = true;
		window.untrustedAt = {};
		const note = () => document.querySelectorAll('#vms tbody tr[data-status="untrusted"]').forEach(tr => {
			const key = tr.id.slice(3);
			if (!(key in window.untrustedAt)) { window.untrustedAt[key] = Date.now(); }
		});
		note();
		new MutationObserver(note).observe(document.querySelector("#vms tbody"), {childList: true, subtree: true, attributes: true});
	})()`))
	if n := eval[int](b, `Object.keys(window.untrustedAt).length`); n != 0 {
		t.Fatalf("%d VMs untrusted before the scenario", n)
	}
	b.wait(60*time.Second, "a tampered VM untrusted on the open page", `Object.keys(window.untrustedAt).length >= 2`)
	if !eval[bool](b, `window.vigilNoReload === true`) {
		t.Fatal("the page reloaded")
	}
	seen := eval[map[string]float64](b, `window.untrustedAt`)
	var untrusted string
	for key, ms := range seen {
		shown := time.UnixMilli(int64(ms))
		vmu.Lock()
		at, ok := contraindicated[key]
		vmu.Unlock()
		if !ok {
			t.Errorf("VM %s untrusted on the page without a contraindicated verdict", key)
			continue
		}
		if lag := shown.Sub(at); lag > 2*time.Second {
			t.Errorf("VM %s turned untrusted on the page %s after its verdict (want within 2s)", key, lag)
		} else {
			t.Logf("VM %s untrusted on the page %s after its verdict", key, lag.Round(time.Millisecond))
		}
		untrusted = key
	}
	// Let the overview catch up, then keep its picture.
	b.wait(10*time.Second, "the overview counts the untrusted VMs", `Number(document.querySelector("#count-untrusted b").textContent) >= 2`)
	b.screenshot("overview")

	// Filtering.
	b.do(10*time.Second, "filter untrusted", chromedp.Navigate(base+"/?status=untrusted"))
	b.wait(10*time.Second, "only untrusted rows", `(() => { const rows = document.querySelectorAll("#vms tbody tr");
		return rows.length >= 2 && [...rows].every(r => r.dataset.status === "untrusted"); })()`)
	name := eval[string](b, `document.querySelector("#vms tbody tr td a").textContent`)
	b.do(10*time.Second, "search by name", chromedp.Navigate(base+"/?q="+name))
	b.wait(10*time.Second, "one row for the name", fmt.Sprintf(`document.querySelectorAll("#vms tbody tr").length === 1 && document.querySelector("#vms tbody tr td a").textContent === %q`, name))
	b.screenshot("filtered")

	// Paging: 5 per page, then the next page has the rest.
	b.do(10*time.Second, "first page", chromedp.Navigate(base+"/?per=5"))
	b.wait(10*time.Second, "five rows", `document.querySelectorAll("#vms tbody tr").length === 5 && document.getElementById("next") !== null`)
	first := eval[string](b, `[...document.querySelectorAll("#vms tbody tr")].map(r => r.id).join(",")`)
	b.do(10*time.Second, "next page", chromedp.Navigate(eval[string](b, `document.getElementById("next").href`)))
	b.wait(10*time.Second, "the rest on page 2", fmt.Sprintf(`document.querySelectorAll("#vms tbody tr").length === %d && document.getElementById("prev") !== null`, vms-5))
	second := eval[string](b, `[...document.querySelectorAll("#vms tbody tr")].map(r => r.id).join(",")`)
	for _, id := range strings.Split(second, ",") {
		if strings.Contains(first, id) {
			t.Errorf("row %s on both pages", id)
		}
	}

	// The tampered VM's page: its reason codes and a verified inclusion
	// proof (once the console has verified the log past its events).
	b.loadUntil(30*time.Second, base+"/vm/"+untrusted, "a verified inclusion proof on the VM page", `document.querySelector("#timeline .proof.ok") !== null`)
	reasons := eval[string](b, `document.getElementById("reasons") ? document.getElementById("reasons").innerText : ""`)
	if !strings.Contains(reasons, "policy.") {
		t.Errorf("the VM page shows no reason code: %q", reasons)
	}
	if proof := eval[string](b, `document.querySelector("#timeline .proof.ok").textContent`); !strings.Contains(proof, "in the log at index") || !strings.Contains(proof, "verified") {
		t.Errorf("proof text %q", proof)
	}
	b.screenshot("vm")

	b.do(10*time.Second, "alerts page", chromedp.Navigate(base+"/alerts"))
	b.wait(20*time.Second, "an alert", `document.querySelectorAll("#alerts tbody tr").length > 0`)
	b.screenshot("alerts")
	b.do(10*time.Second, "audit page", chromedp.Navigate(base+"/audit"))
	b.wait(20*time.Second, "the log verified", `document.getElementById("verified") !== null`)
	b.screenshot("audit")

	if errs := b.consoleErrors(); len(errs) > 0 {
		t.Errorf("the browser's console logged errors:\n%s", strings.Join(errs, "\n"))
	}
}
