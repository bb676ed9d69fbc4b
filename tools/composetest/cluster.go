package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// probe posts small CloudEvents to ingest's webhook, one at a time, and
// keeps the ids of those it acknowledged: ingest answers 2xx only after
// the event is stored on VIGIL_RAW, so each must be found there.
type probe struct {
	url, run string
	mu       sync.Mutex
	acked    []string
	refused  int
}

func (p *probe) loop(ctx context.Context) {
	client := &http.Client{Timeout: 10 * time.Second}
	for n := 0; ctx.Err() == nil; n++ {
		id := fmt.Sprintf("composetest-%s-%d", p.run, n)
		body := fmt.Sprintf(`{"specversion":"1.0","id":%q,"type":"io.vigil.composetest.probe","source":"/composetest","time":%q,"data":{}}`,
			id, time.Now().UTC().Format(time.RFC3339Nano))
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, strings.NewReader(body))
		if err != nil {
			return
		}
		req.Header.Set("Content-Type", "application/cloudevents+json")
		resp, err := client.Do(req)
		p.mu.Lock()
		if err == nil && resp.StatusCode/100 == 2 {
			p.acked = append(p.acked, id)
		} else if ctx.Err() == nil {
			p.refused++
		}
		p.mu.Unlock()
		if err == nil {
			resp.Body.Close()
		}
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (p *probe) counts() (acked, refused int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.acked), p.refused
}

// clusterFaults runs the faults of the cluster file while the pipeline
// runs and the probe posts events: nats-2 stopped and started again, then
// nats-3 cut off its network and connected again. After each fault it
// measures how long until the pipeline goes on (a probe event acked and
// new events on VIGIL_EVENTS, seen through nats, the published node); at
// the end every acked probe event must be on VIGIL_RAW, no VM may be
// falsely revoked, and every service must be running.
func (s *stack) clusterFaults(ctx context.Context, conn *bus.Conn) (string, error) {
	pctx, stopProbe := context.WithCancel(ctx)
	p := &probe{url: webhookURL + "?secret=" + s.secret, run: s.project}
	var wg sync.WaitGroup
	wg.Go(func() { p.loop(pctx) })
	defer func() { stopProbe(); wg.Wait() }()

	network := s.project + "_default"
	var measured []string
	faults := []struct {
		name, service string
		do, undo      []string
	}{
		{"nats-2 stopped", "nats-2", []string{"stop", "-t", "5"}, []string{"start"}},
		{"nats-3 cut off its network", "nats-3", []string{"network", "disconnect", network}, []string{"network", "connect", network}},
	}
	for _, f := range faults {
		id, err := s.containerOf(ctx, f.service)
		if err != nil {
			return "", err
		}
		s.logf("cluster: %s", f.name)
		start := time.Now()
		s.down = f.service
		if _, err := docker(ctx, append(f.do, id)...); err != nil {
			return "", err
		}
		took, err := s.waitProgress(ctx, conn, p, start)
		if err != nil {
			return "", fmt.Errorf("with %s: %w", f.name, err)
		}
		if _, err := docker(ctx, append(f.undo, id)...); err != nil {
			return "", err
		}
		back, err := s.waitHealthy(ctx, f.service, 2*time.Minute)
		if err != nil {
			return "", err
		}
		s.down = ""
		measured = append(measured, fmt.Sprintf("%s: the pipeline went on after %s, the node was back in %s",
			f.name, took.Round(100*time.Millisecond), back.Round(100*time.Millisecond)))
	}
	stopProbe()
	wg.Wait()

	// Every acked probe event is stored. Right after the faults the
	// cluster may still be catching up: JetStream's reads are retried.
	found := map[string]bool{}
	if err := retry(ctx, 2*time.Minute, func(ctx context.Context) error {
		clear(found)
		return readStream(ctx, conn.JS, events.StreamRaw, func(m jetstream.Msg) error {
			if i := strings.Index(string(m.Data()), "composetest-"+s.project+"-"); i >= 0 {
				rest := string(m.Data())[i:]
				if j := strings.IndexAny(rest, `"\`); j >= 0 {
					found[rest[:j]] = true
				}
			}
			return nil
		})
	}); err != nil {
		return "", err
	}
	acked, refused := p.counts()
	var lost []string
	for _, id := range p.acked {
		if !found[id] {
			lost = append(lost, id)
		}
	}
	if len(lost) > 0 {
		return "", fmt.Errorf("%d of %d events acknowledged by the webhook are not on %s: %v", len(lost), acked, events.StreamRaw, lost[:min(len(lost), 10)])
	}
	// No VM falsely revoked, every service still running.
	var st *fleetState
	if err := retry(ctx, 2*time.Minute, func(ctx context.Context) (err error) {
		st, err = readFleet(ctx, conn.JS)
		return err
	}); err != nil {
		return "", err
	}
	if _, _, err := st.judge(s.vms, 0); err != nil {
		return "", err
	}
	if err := s.failed(ctx); err != nil {
		return "", err
	}
	return fmt.Sprintf("%s; %d probe events acknowledged by the webhook, all %d found on %s (%d refused during the faults); no VM falsely revoked, every service reconnected by itself",
		strings.Join(measured, "; "), acked, acked, events.StreamRaw, refused), nil
}

// waitProgress waits until, after start, the webhook acknowledged a probe
// event and VIGIL_EVENTS grew by some events (verdicts go on).
func (s *stack) waitProgress(ctx context.Context, conn *bus.Conn, p *probe, start time.Time) (time.Duration, error) {
	acked0, _ := p.counts()
	seq0 := uint64(0)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if err := s.failed(ctx); err != nil {
			return 0, err
		}
		seq := lastSeq(ctx, conn, events.StreamEvents)
		if seq0 == 0 {
			seq0 = seq
		}
		acked, _ := p.counts()
		if acked > acked0 && seq0 > 0 && seq >= seq0+10 {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("the pipeline did not go on within 2m (probe events acked %d→%d, events %d→%d)", acked0, acked, seq0, seq)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitHealthy waits until the service's container is healthy again.
func (s *stack) waitHealthy(ctx context.Context, service string, within time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		cs, err := s.containers(ctx)
		if err != nil {
			return 0, err
		}
		for _, c := range cs {
			if c.Service == service && c.Status == "running" && c.Health == "healthy" {
				return time.Since(start), nil
			}
		}
		if time.Since(start) > within {
			return 0, fmt.Errorf("%s is not healthy %s after it was brought back", service, within)
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// lastSeq is a stream's last sequence, 0 when JetStream does not answer
// within a few seconds (a stream whose leader is cut off answers only once
// the others elect a new one).
func lastSeq(ctx context.Context, conn *bus.Conn, stream string) uint64 {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := conn.JS.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	info, err := st.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

// retry calls f, each time with a deadline of a minute, until it succeeds
// or within has passed; then it returns f's last error.
func retry(ctx context.Context, within time.Duration, f func(context.Context) error) error {
	deadline := time.Now().Add(within)
	for {
		actx, cancel := context.WithTimeout(ctx, time.Minute)
		err := f(actx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}
