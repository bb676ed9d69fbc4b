// Package fleet simulates a fleet of Azure Confidential VMs for `vigil dev`
// and `vigil sim`: each VM exists in a simulated ARM API, its lifecycle
// reaches ingest's webhook as Event Grid events, and its in-guest agent
// answers challenges with simulated hardware evidence. A scenario makes some
// VMs go bad partway through a run.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/azuresim"
	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/services/agent"
)

// Scenarios.
const (
	ScenarioTamper = "tamper" // a few VMs go bad partway
	ScenarioNone   = "none"   // a healthy fleet only
)

// Fault kinds injected by the tamper scenario.
const (
	FaultMeasurement = "tampered-measurement"
	FaultDebug       = "debug-enabled"
	FaultSilent      = "silent-agent"
)

var faultKinds = []string{FaultMeasurement, FaultDebug, FaultSilent}

// Config configures a simulated fleet.
type Config struct {
	VMs      int    // number of VMs (default 20)
	TDXEvery int    // every n-th VM is TDX (default 3; negative: none)
	Scenario string // ScenarioTamper (default) or ScenarioNone
	// TamperAfter is when the scenario's faults start (default 20 s).
	TamperAfter time.Duration
	// Bad is how many VMs the tamper scenario spoils (default
	// max(3, VMs/10), at most VMs/2).
	Bad int

	// WebhookURL is ingest's Event Grid endpoint, with ?secret=... when
	// it requires one.
	WebhookURL string
	// ARMListen is where the simulated ARM API listens (default
	// 127.0.0.1:0).
	ARMListen string

	Authority *sim.Authority // default sim.NewAuthority with the default seed
	Logger    *slog.Logger
	// OnFault is called when the scenario spoils a VM.
	OnFault func(vmKey, name, fault string)
	// OnLifecycle is called when the scenario deallocates, starts or
	// deletes a VM.
	OnLifecycle func(vmKey, name, op string)
	// OnConfig is called when the scenario changes a VM's configuration
	// in ARM (DriftBootDiagnostics, FixBootDiagnostics).
	OnConfig func(vmKey, name, change string)
	// Connect, when set, gives each VM's agent a connection of its own
	// (under auth: the VM's agent credentials, which may serve its own
	// challenge subject only, earned by enrolling with src, the VM's
	// evidence); Run's conn is then unused for agents. Without it every
	// agent is served on Run's conn. The connection is the caller's to
	// keep up until ctx ends.
	Connect func(ctx context.Context, vmKey string, src agent.Source) (*bus.Conn, error)
	// ConnectConcurrency bounds how many agents connect at once (default
	// 32).
	ConnectConcurrency int
}

// VM is one simulated VM as the fleet knows it.
type VM struct {
	Key        string
	ResourceID string
	Name       string
	VMID       string
	Platform   string
	Fault      string // "" for a healthy VM
	FaultAt    time.Time
	Cycled     bool // deallocated and started again by the scenario
	Deleted    bool // deleted by the scenario
	// Drifted: the scenario turned on boot diagnostics on this healthy VM
	// (a configuration finding, not a fault: the VM stays trusted) and
	// turned it off again a little later (DriftFixed).
	Drifted, DriftFixed bool
}

// Configuration changes the tamper scenario makes in ARM.
const (
	DriftBootDiagnostics = "boot diagnostics enabled"
	FixBootDiagnostics   = "boot diagnostics disabled"
)

// Fleet is a running simulated fleet.
type Fleet struct {
	cfg    Config
	log    *slog.Logger
	arm    *azuresim.ARM
	agents *agent.Fleet
	specs  map[string]azuresim.VMSpec // by VM key; read and changed (Reconfigure) under mu
	sender *azuresim.Sender
	ln     net.Listener

	mu  sync.Mutex
	vms map[string]*VM
	// own are the agents on connections of their own (Config.Connect), by
	// VM key; nil otherwise.
	own map[string]*ownAgent
}

// New creates the fleet's VMs and starts listening for ARM requests.
func New(cfg Config) (*Fleet, error) {
	if cfg.VMs <= 0 {
		cfg.VMs = 20
	}
	if cfg.TDXEvery == 0 {
		cfg.TDXEvery = 3
	}
	if cfg.TDXEvery < 0 {
		cfg.TDXEvery = 0
	}
	if cfg.Scenario == "" {
		cfg.Scenario = ScenarioTamper
	}
	if cfg.Scenario != ScenarioTamper && cfg.Scenario != ScenarioNone {
		return nil, fmt.Errorf("fleet: unknown scenario %q (want %s or %s)", cfg.Scenario, ScenarioTamper, ScenarioNone)
	}
	if cfg.TamperAfter <= 0 {
		cfg.TamperAfter = 20 * time.Second
	}
	if cfg.Bad <= 0 {
		cfg.Bad = max(3, cfg.VMs/10)
	}
	cfg.Bad = min(cfg.Bad, cfg.VMs/2)
	if cfg.ARMListen == "" {
		cfg.ARMListen = "127.0.0.1:0"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Authority == nil {
		a, err := sim.NewAuthority(sim.AuthorityConfig{})
		if err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
		cfg.Authority = a
	}
	agents, err := agent.NewFleet(agent.FleetConfig{
		Authority: cfg.Authority,
		VMs:       cfg.VMs,
		TDXEvery:  cfg.TDXEvery,
		Logger:    cfg.Logger.With("component", "agents"),
	})
	if err != nil {
		return nil, fmt.Errorf("fleet: agents: %w", err)
	}
	f := &Fleet{
		cfg: cfg, log: cfg.Logger, arm: azuresim.NewARM(100), agents: agents,
		specs: map[string]azuresim.VMSpec{}, vms: map[string]*VM{},
		sender: &azuresim.Sender{URL: cfg.WebhookURL, MaxAttempts: 30},
	}
	for i, v := range agents.VMs() {
		rid, err := arm.ParseResourceID(v.ResourceID())
		if err != nil {
			return nil, fmt.Errorf("fleet: VM resource ID %q: %w", v.ResourceID(), err)
		}
		size := "Standard_DC4as_v5"
		if v.Platform() == "azure-tdx" {
			size = "Standard_DC4es_v5"
		}
		spec := azuresim.VMSpec{
			Subscription: rid.SubscriptionID, ResourceGroup: rid.ResourceGroupName, Name: rid.Name,
			Location: "westeurope", VMID: v.VMID(), Size: size, Tags: azuresim.TagsFor(rid.Name),
		}
		f.specs[v.VMKey()] = spec
		f.vms[v.VMKey()] = &VM{Key: v.VMKey(), ResourceID: v.ResourceID(), Name: fmt.Sprintf("%s (#%d)", rid.Name, i+1), VMID: v.VMID(), Platform: v.Platform()}
	}
	ln, err := net.Listen("tcp", cfg.ARMListen)
	if err != nil {
		return nil, fmt.Errorf("fleet: ARM listener: %w", err)
	}
	f.ln = ln
	return f, nil
}

// SetWebhook sets ingest's webhook URL when it was not known at New; call
// it before Run.
func (f *Fleet) SetWebhook(url string) {
	f.cfg.WebhookURL = url
	f.sender.URL = url
}

// ARMEndpoint is the simulated ARM API's base URL.
func (f *Fleet) ARMEndpoint() string { return "http://" + f.ln.Addr().String() }

// Subscriptions lists the subscriptions the fleet's VMs live in.
func (f *Fleet) Subscriptions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[string]bool{}
	var out []string
	for _, s := range f.specs {
		if !seen[s.Subscription] {
			seen[s.Subscription] = true
			out = append(out, s.Subscription)
		}
	}
	sort.Strings(out)
	return out
}

// Authority is the simulated hardware vendors; verifiers must trust its
// TrustRoots.
func (f *Fleet) Authority() *sim.Authority { return f.cfg.Authority }

// VMs returns a snapshot of every VM, in a stable order.
func (f *Fleet) VMs() []VM {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]VM, 0, len(f.vms))
	for _, v := range f.vms {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ResourceID < out[j].ResourceID })
	return out
}

// Run serves the ARM API and the agents on conn, announces every VM to
// ingest (create and start events), runs the scenario and returns when ctx
// ends.
func (f *Fleet) Run(ctx context.Context, conn *bus.Conn) error {
	srv := &http.Server{Handler: f.arm, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(f.ln) }()
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()

	// failed receives the agents' error, if they fail; agents served on
	// conn return nil at once and keep serving until ctx ends. up is
	// closed once every agent serves: agents of their own connect (and
	// enroll, which needs ARM to have reported the VM) after the
	// announcement, and the scenario's clock starts from then.
	failed := make(chan error, 1)
	up := make(chan struct{})
	serve := func() error { close(up); return f.agents.Serve(ctx, conn) }
	if f.cfg.Connect != nil {
		serve = func() error { return f.serveOwn(ctx, up) }
	}
	go func() {
		if err := serve(); err != nil && ctx.Err() == nil {
			failed <- err
		}
	}()

	if err := f.waitForWebhook(ctx); err != nil {
		return err
	}
	if err := f.announce(ctx); err != nil {
		return err
	}
	if f.cfg.Scenario == ScenarioTamper {
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return fmt.Errorf("fleet: agents: %w", err)
		case <-up:
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			return fmt.Errorf("fleet: agents: %w", err)
		case <-time.After(f.cfg.TamperAfter):
			f.tamper()
			go f.churn(ctx)
		}
	}
	// The agents' subscriptions stay until ctx ends.
	select {
	case <-ctx.Done():
		return nil
	case err := <-failed:
		return fmt.Errorf("fleet: agents: %w", err)
	}
}

// waitForWebhook performs Event Grid's subscription validation handshake,
// retrying until ingest answers it.
func (f *Fleet) waitForWebhook(ctx context.Context) error {
	var last error
	for range 100 {
		if last = f.sender.Validate(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("fleet: ingest webhook %s did not answer the validation handshake: %w", f.cfg.WebhookURL, last)
}

// announce creates every VM in ARM and sends its create and start events in
// batches, as Event Grid delivers them.
func (f *Fleet) announce(ctx context.Context) error {
	f.mu.Lock()
	specs := maps.Clone(f.specs)
	f.mu.Unlock()
	keys := slices.Sorted(maps.Keys(specs))
	const batch = 50
	for i := 0; i < len(keys); i += batch {
		var evs []azuresim.Event
		now := time.Now()
		for _, k := range keys[i:min(i+batch, len(keys))] {
			spec := specs[k]
			f.arm.Put(spec)
			evs = append(evs, azuresim.LifecycleEvent(spec, azuresim.OpCreate, now), azuresim.LifecycleEvent(spec, azuresim.OpStart, now.Add(time.Millisecond)))
		}
		if err := f.sender.Send(ctx, evs...); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fleet: announce VMs: %w", err)
		}
	}
	f.log.InfoContext(ctx, "fleet announced to ingest", "vms", len(keys), "arm", f.ARMEndpoint())
	return nil
}

// tamper spoils cfg.Bad VMs, rotating through the fault kinds.
func (f *Fleet) tamper() {
	vms := f.VMs()
	rng := rand.New(rand.NewPCG(uint64(len(vms)), 7))
	rng.Shuffle(len(vms), func(i, j int) { vms[i], vms[j] = vms[j], vms[i] })
	for i, v := range vms[:f.cfg.Bad] {
		kind := faultKinds[i%len(faultKinds)]
		var fl agent.Faults
		switch kind {
		case FaultMeasurement:
			fl.TamperedMeasurement = true
		case FaultDebug:
			fl.Debug = true
		case FaultSilent:
			fl.Silent = true
		}
		if err := f.setFaults(v.Key, fl); err != nil {
			f.log.Error("inject fault", "vm", v.Key, "fault", kind, "err", err)
			continue
		}
		f.mu.Lock()
		f.vms[v.Key].Fault = kind
		f.vms[v.Key].FaultAt = time.Now()
		f.mu.Unlock()
		f.log.Info("scenario: VM goes bad", "vm", v.Key, "name", v.Name, "fault", kind)
		if f.cfg.OnFault != nil {
			f.cfg.OnFault(v.Key, v.Name, kind)
		}
	}
}

// churn exercises the rest of a VM's lifecycle on healthy VMs, as Azure
// reports it through Event Grid: one is deallocated and started again
// (suspended, then trusted), one is deleted (retired, its keys revoked),
// and on a third an operator turns on boot diagnostics, then off again
// five seconds later (a configuration drift that ingest finds when it
// reads the VM after each write event: the finding's alert
// config.boot_diagnostics.screenshots fires, then resolves; the VM stays
// trusted and keeps its keys, since findings do not change a VM's status).
// With fewer than four healthy VMs only the drift happens.
func (f *Fleet) churn(ctx context.Context) {
	var healthy []VM
	for _, v := range f.VMs() {
		if v.Fault == "" {
			healthy = append(healthy, v)
		}
	}
	type step struct {
		after  time.Duration
		vm     VM
		op     azuresim.Op
		config string // instead of op: a configuration change
	}
	var steps []step
	switch {
	case len(healthy) >= 4:
		cycled, drifted, deleted := healthy[0], healthy[1], healthy[len(healthy)-1]
		steps = []step{
			{2 * time.Second, cycled, azuresim.OpDeallocate, ""},
			{3 * time.Second, drifted, "", DriftBootDiagnostics},
			{4 * time.Second, deleted, azuresim.OpDelete, ""},
			{8 * time.Second, drifted, "", FixBootDiagnostics},
			{10 * time.Second, cycled, azuresim.OpStart, ""},
		}
	case len(healthy) >= 1:
		// Too few to spare two for the lifecycle: the drift alone.
		steps = []step{
			{3 * time.Second, healthy[0], "", DriftBootDiagnostics},
			{8 * time.Second, healthy[0], "", FixBootDiagnostics},
		}
	}
	start := time.Now()
	for _, st := range steps {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(start.Add(st.after))):
		}
		if st.config != "" {
			f.drift(ctx, st.vm, st.config)
			continue
		}
		f.mu.Lock()
		switch st.op {
		case azuresim.OpDeallocate:
			f.vms[st.vm.Key].Cycled = true
		case azuresim.OpDelete:
			f.vms[st.vm.Key].Deleted = true
		}
		f.mu.Unlock()
		if st.op == azuresim.OpDelete {
			_ = f.setFaults(st.vm.Key, agent.Faults{Silent: true}) // a deleted VM answers nothing
		}
		if err := f.Lifecycle(ctx, st.vm.Key, st.op); err != nil {
			f.log.Error("scenario lifecycle", "vm", st.vm.Key, "op", st.op, "err", err)
			continue
		}
		f.log.Info("scenario: lifecycle", "vm", st.vm.Key, "name", st.vm.Name, "op", st.op)
		if f.cfg.OnLifecycle != nil {
			f.cfg.OnLifecycle(st.vm.Key, st.vm.Name, string(st.op))
		}
	}
}

// drift makes one of the scenario's configuration changes on vm.
func (f *Fleet) drift(ctx context.Context, vm VM, change string) {
	on := change == DriftBootDiagnostics
	f.mu.Lock()
	if on {
		f.vms[vm.Key].Drifted = true
	} else {
		f.vms[vm.Key].DriftFixed = true
	}
	f.mu.Unlock()
	if err := f.Reconfigure(ctx, vm.Key, func(s *azuresim.VMSpec) { s.BootDiagnosticsOnly = on }); err != nil {
		f.log.Error("scenario configuration change", "vm", vm.Key, "change", change, "err", err)
		return
	}
	f.log.Info("scenario: configuration change", "vm", vm.Key, "name", vm.Name, "change", change)
	if f.cfg.OnConfig != nil {
		f.cfg.OnConfig(vm.Key, vm.Name, change)
	}
}

// Reconfigure changes a VM's model in ARM and delivers the write event
// Event Grid sends for an update (Microsoft.Compute/virtualMachines/write,
// as for a create; ingest tells them apart by whether it knows the VM).
func (f *Fleet) Reconfigure(ctx context.Context, vmKey string, change func(*azuresim.VMSpec)) error {
	f.mu.Lock()
	spec, ok := f.specs[vmKey]
	if ok {
		change(&spec)
		f.specs[vmKey] = spec
		f.arm.Put(spec)
	}
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownVM, vmKey)
	}
	return f.sender.Send(ctx, azuresim.LifecycleEvent(spec, azuresim.OpCreate, time.Now()))
}

// ErrUnknownVM is returned for a VM key the fleet does not have.
var ErrUnknownVM = errors.New("fleet: unknown VM")

// Lifecycle performs op on a VM in ARM and delivers its Event Grid event.
func (f *Fleet) Lifecycle(ctx context.Context, vmKey string, op azuresim.Op) error {
	f.mu.Lock()
	spec, ok := f.specs[vmKey]
	f.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: %s", ErrUnknownVM, vmKey)
	}
	switch op {
	case azuresim.OpCreate:
		f.arm.Put(spec)
	case azuresim.OpStart, azuresim.OpRestart:
		f.arm.SetPower(spec.ResourceID(), azuresim.PowerRunning)
	case azuresim.OpDeallocate:
		f.arm.SetPower(spec.ResourceID(), azuresim.PowerDeallocated)
	case azuresim.OpPowerOff:
		f.arm.SetPower(spec.ResourceID(), azuresim.PowerStopped)
	case azuresim.OpDelete:
		f.arm.Delete(spec.ResourceID())
	}
	return f.sender.Send(ctx, azuresim.LifecycleEvent(spec, op, time.Now()))
}
