package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
)

// Faults switch a simulated VM's misbehaviour. They can be changed at any
// time (vigil dev's tamper scenario flips them partway through a run).
type Faults struct {
	// TamperedMeasurement boots a different image: the SNP measurement or
	// TDX MRTD is not the reference (policy.measurement_not_allowed).
	TamperedMeasurement bool
	// Debug enables debugging in the SNP guest policy or TDX TD attributes
	// (policy.debug_enabled).
	Debug bool
	// WrongVMID makes the runtime data's vmUniqueId differ from the vmId
	// ARM reports (identity.vmid_mismatch).
	WrongVMID bool
	// Replay answers with the evidence of the previous challenge
	// (tpm.nonce_mismatch).
	Replay bool
	// Silent stops the agent: it no longer subscribes, so challenges find
	// no responder.
	Silent bool
	// Delay answers each challenge only after this long (a slow agent; a
	// delay beyond the challenge's deadline is a timeout).
	Delay time.Duration
	// Evidence sets further evidence faults of the simulator directly
	// (low TCB, broken signature, ...); the fields above are OR-ed in.
	Evidence sim.Faults
}

func (f Faults) sim() sim.Faults {
	s := f.Evidence
	s.WrongMeasurement = s.WrongMeasurement || f.TamperedMeasurement
	s.DebugPolicy = s.DebugPolicy || f.Debug
	s.WrongVMID = s.WrongVMID || f.WrongVMID
	s.StaleNonce = s.StaleNonce || f.Replay
	return s
}

// FleetConfig configures a fleet of simulated agents.
type FleetConfig struct {
	// Authority is the simulated hardware vendors; default
	// sim.NewAuthority with the default seed. Verifiers must trust its
	// TrustRoots.
	Authority *sim.Authority
	// VMs is the number of simulated VMs.
	VMs int
	// VM is the template of every VM (platform, product line, ...). Its
	// AK defaults to ECDSA P-256, which is generated in microseconds.
	VM sim.VMConfig
	// TDXEvery makes every n-th VM an Azure TDX VM (0: none), for mixed
	// fleets.
	TDXEvery int
	// RatePerSecond and Burst bound each simulated agent's answers as
	// Config does for a real one (defaults 100/s, burst 100).
	RatePerSecond float64
	Burst         int
	// ChallengeTimeout bounds one answer (default 10 s).
	ChallengeTimeout time.Duration
	// Logger defaults to slog.Default(); MeterProvider to the otel global.
	Logger        *slog.Logger
	MeterProvider metric.MeterProvider
}

// Fleet is many simulated agents served on one NATS connection, each
// subscribed to its own VM's challenge subject only, each signing its
// evidence in pure Go with its own keys.
type Fleet struct {
	cfg  FleetConfig
	auth *sim.Authority
	vms  []*SimVM
	by   map[string]*SimVM

	mu    sync.Mutex
	conn  *bus.Conn
	ctx   context.Context
	serve bool
}

// SimVM is one simulated VM and its agent.
type SimVM struct {
	*sim.VM
	fleet  *Fleet
	agent  *Agent
	faults atomic.Pointer[Faults]
	served atomic.Int64 // challenges answered with evidence

	mu    sync.Mutex
	unsub func() error // nil when not subscribed
}

// NewFleet creates the simulated VMs (key generation runs in parallel).
func NewFleet(cfg FleetConfig) (*Fleet, error) {
	if cfg.VMs < 0 {
		return nil, fmt.Errorf("agent: %d simulated VMs", cfg.VMs)
	}
	if cfg.Authority == nil {
		a, err := sim.NewAuthority(sim.AuthorityConfig{})
		if err != nil {
			return nil, err
		}
		cfg.Authority = a
	}
	if cfg.RatePerSecond <= 0 {
		cfg.RatePerSecond = 100
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	tmpl := cfg.VM
	if tmpl.VMID != "" || tmpl.ResourceID != "" {
		return nil, errors.New("agent: the fleet's VM template must not fix VMID or ResourceID")
	}
	if tmpl.AK == sim.AKRSA2048 {
		tmpl.AK = sim.AKECDSAP256
	}
	f := &Fleet{cfg: cfg, auth: cfg.Authority, vms: make([]*SimVM, 0, cfg.VMs), by: make(map[string]*SimVM, cfg.VMs)}
	snp, tdx := cfg.VMs, 0
	if cfg.TDXEvery > 0 {
		tdx = cfg.VMs / cfg.TDXEvery
		snp = cfg.VMs - tdx
	}
	add := func(n int, c sim.VMConfig) error {
		if n == 0 {
			return nil
		}
		vms, err := f.auth.NewFleet(n, c)
		if err != nil {
			return err
		}
		for _, v := range vms {
			f.add(v)
		}
		return nil
	}
	if err := add(snp, tmpl); err != nil {
		return nil, err
	}
	tmpl.Platform = evidence.PlatformAzureTDX
	if err := add(tdx, tmpl); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Fleet) add(v *sim.VM) *SimVM {
	s := &SimVM{VM: v, fleet: f}
	s.faults.Store(&Faults{})
	s.agent = New(v.VMKey(), simSource{s}, f.cfg.ChallengeTimeout, f.cfg.RatePerSecond, f.cfg.Burst,
		f.cfg.Logger.With("vm", v.VMKey(), "simulated", true), f.cfg.MeterProvider)
	f.vms = append(f.vms, s)
	f.by[v.VMKey()] = s
	return s
}

// Authority is the simulated hardware vendors of the fleet.
func (f *Fleet) Authority() *sim.Authority { return f.auth }

// VMs are the fleet's VMs, in creation order.
func (f *Fleet) VMs() []*SimVM { return f.vms }

// VM returns the VM with VM key vm, or nil.
func (f *Fleet) VM(vm string) *SimVM { return f.by[vm] }

// SetFaults changes the faults of VM vm.
func (f *Fleet) SetFaults(vm string, fl Faults) error {
	v := f.by[vm]
	if v == nil {
		return fmt.Errorf("agent: no simulated VM %s", vm)
	}
	return v.SetFaults(fl)
}

// Serve subscribes every VM that is not silent until ctx ends.
func (f *Fleet) Serve(ctx context.Context, conn *bus.Conn) error {
	f.mu.Lock()
	f.conn, f.ctx, f.serve = conn, ctx, true
	f.mu.Unlock()
	for _, v := range f.vms {
		if err := v.apply(); err != nil {
			return err
		}
	}
	go func() {
		<-ctx.Done()
		f.mu.Lock()
		f.serve = false
		f.mu.Unlock()
	}()
	return nil
}

// Faults are the VM's current faults.
func (v *SimVM) Faults() Faults { return *v.faults.Load() }

// SetFaults switches the VM's faults; a silent VM unsubscribes, one that
// is no longer silent subscribes again.
func (v *SimVM) SetFaults(fl Faults) error {
	v.faults.Store(&fl)
	v.VM.SetFaults(fl.sim())
	return v.apply()
}

// Answered is the number of challenges the VM answered with evidence.
func (v *SimVM) Answered() int64 { return v.served.Load() }

// apply makes the subscription match the Silent fault.
func (v *SimVM) apply() error {
	f := v.fleet
	f.mu.Lock()
	conn, ctx, serving := f.conn, f.ctx, f.serve
	f.mu.Unlock()
	v.mu.Lock()
	defer v.mu.Unlock()
	silent := v.Faults().Silent
	switch {
	case (!serving || silent) && v.unsub != nil:
		// An error means the subscription is gone already (the serving
		// context ended or the connection closed).
		_ = v.unsub()
		v.unsub = nil
	case serving && !silent && v.unsub == nil:
		unsub, err := v.agent.Serve(ctx, conn)
		if err != nil {
			return err
		}
		v.unsub = unsub
	}
	return nil
}

// simSource produces a simulated VM's evidence with its current faults.
type simSource struct{ v *SimVM }

func (s simSource) Evidence(ctx context.Context, nonce, extraData []byte) ([]byte, error) {
	if d := s.v.Faults().Delay; d > 0 {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("simulated slow agent: %w", ctx.Err())
		}
	}
	out, err := s.v.VM.Answer(sim.Challenge{Nonce: nonce, ExtraData: extraData})
	if err != nil {
		return nil, err
	}
	s.v.served.Add(1)
	return out, nil
}
