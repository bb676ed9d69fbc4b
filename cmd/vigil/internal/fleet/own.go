package fleet

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/services/agent"
)

// ownAgent is a simulated VM's agent on a connection of its own
// (Config.Connect), as a real agent runs with its VM's credentials.
type ownAgent struct {
	vm    *agent.SimVM
	agent *agent.Agent
	conn  *bus.Conn
	ctx   context.Context

	mu    sync.Mutex
	unsub func() error // nil when not subscribed
}

// ownSource answers with the simulated VM's evidence, spoiled by its
// current faults (agent.Fleet.SetFaults sets them on the VM).
type ownSource struct{ vm *agent.SimVM }

func (s ownSource) Evidence(_ context.Context, nonce, extraData []byte) ([]byte, error) {
	return s.vm.VM.Answer(sim.Challenge{Nonce: nonce, ExtraData: extraData})
}

// serveOwn connects every VM's agent on its own connection, at most
// ConnectConcurrency at a time, and serves each as soon as it is
// connected (an agent that enrolls waits for ARM to report its VM, and
// the others must not wait for it) until ctx ends; then it closes the
// connections. It closes up once every agent serves.
func (f *Fleet) serveOwn(ctx context.Context, up chan<- struct{}) error {
	n := f.cfg.ConnectConcurrency
	if n <= 0 {
		n = 32
	}
	vms := f.agents.VMs()
	start := time.Now()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.mu.Lock()
	f.own = make(map[string]*ownAgent, len(vms))
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		for _, a := range f.own {
			_ = a.conn.Close()
		}
	}()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		err   error
		slots = make(chan struct{}, n)
	)
	fail := func(e error) { once.Do(func() { err = e; cancel() }) }
	for _, v := range vms {
		select {
		case slots <- struct{}{}:
		case <-cctx.Done():
		}
		if cctx.Err() != nil {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, cerr := f.cfg.Connect(cctx, v.VMKey(), ownSource{v})
			<-slots
			if cerr != nil {
				fail(fmt.Errorf("connect the agent of %s: %w", v.VMKey(), cerr))
				return
			}
			a := &ownAgent{vm: v, conn: conn, ctx: ctx,
				agent: agent.New(v.VMKey(), ownSource{v}, 0, 100, 100, f.log.With("component", "agents", "vm", v.VMKey(), "simulated", true), nil)}
			f.mu.Lock()
			f.own[v.VMKey()] = a
			f.mu.Unlock()
			if aerr := a.apply(); aerr != nil {
				fail(fmt.Errorf("serve the agent of %s: %w", v.VMKey(), aerr))
			}
		}()
	}
	wg.Wait()
	if err != nil || ctx.Err() != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	f.log.InfoContext(ctx, "agents connected, each with its own connection", "vms", len(vms), "took", time.Since(start))
	close(up)
	<-ctx.Done()
	return nil
}

// apply makes the agent's subscription match its VM's Silent fault.
func (a *ownAgent) apply() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	silent := a.vm.Faults().Silent
	switch {
	case silent && a.unsub != nil:
		_ = a.unsub()
		a.unsub = nil
	case !silent && a.unsub == nil && a.ctx.Err() == nil:
		unsub, err := a.agent.Serve(a.ctx, a.conn)
		if err != nil {
			return err
		}
		a.unsub = unsub
	}
	return nil
}

// setFaults switches a VM's faults, whether its agent is served on the
// fleet's shared connection or on its own.
func (f *Fleet) setFaults(vm string, fl agent.Faults) error {
	if err := f.agents.SetFaults(vm, fl); err != nil {
		return err
	}
	f.mu.Lock()
	a := f.own[vm]
	f.mu.Unlock()
	if a == nil {
		return nil
	}
	return a.apply()
}
