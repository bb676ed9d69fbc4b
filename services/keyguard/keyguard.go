package keyguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
	"github.com/vigil-cc/vigil/services/keyguard/secrets"
)

// Queue is the queue group keyguard replicas answer requests in.
const Queue = "keyguard"

// Keyguard is one running keyguard replica.
type Keyguard struct {
	cfg      Config
	conn     *bus.Conn
	log      *slog.Logger
	grants   *grants.Store
	secrets  *secrets.Store
	nonces   jetstream.KeyValue
	verifier *evidence.Verifier
	backends map[string]backend
	metrics  *kgMetrics

	// nonceStream is the nonce bucket's stream; vmNonces and
	// requesterNonces limit the rate of nonces per VM and per requester.
	nonceStream               jetstream.Stream
	vmNonces, requesterNonces *limiter

	work      chan string
	pendingMu sync.Mutex
	pending   map[string]applyState // grants queued for or in an apply worker
}

// Run runs keyguard until ctx ends: it consumes verdicts, status changes and
// lifecycle events and revokes, suspends and restores grants on every
// backend; it serves the key release API (vigil.keyguard.nonce,
// vigil.keyguard.release) and the operator API (vigil.keyguard.admin.*).
func Run(ctx context.Context, cfg Config) error {
	k, closeConn, err := open(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeConn()
	return k.run(ctx)
}

// open validates cfg, connects, provisions and opens every store and
// backend; closeConn closes a connection it opened.
func open(ctx context.Context, cfg Config) (k *Keyguard, closeConn func(), err error) {
	closeConn = func() {}
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return nil, closeConn, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	master := cfg.MasterKey
	if master == nil {
		mk, err := secrets.LoadMasterKey(cfg.MasterKeyFile)
		if err != nil {
			return nil, closeConn, fmt.Errorf("%w: %w", ErrConfig, err)
		}
		master = mk
	} else {
		master = append([]byte(nil), master...)
	}
	log := cfg.Logger.With("service", "keyguard")

	conn := cfg.Conn
	if conn == nil {
		bc := cfg.Bus
		if bc.Name == "" {
			bc.Name = "vigil-keyguard"
		}
		bc.WaitForServer = true
		if bc.Logger == nil {
			bc.Logger = log
		}
		if cfg.Telemetry != nil {
			bc.TracerProvider, bc.MeterProvider = cfg.Telemetry.TracerProvider, cfg.Telemetry.MeterProvider
		}
		c, err := bus.Connect(ctx, bc)
		if err != nil {
			return nil, closeConn, fmt.Errorf("keyguard: %w", err)
		}
		conn = c
		closeConn = func() { _ = c.Close() }
	}
	defer func() {
		if err != nil {
			closeConn()
		}
	}()
	if err := events.Provision(ctx, conn.JS, cfg.Topology); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: %w", err)
	}

	var mp metric.MeterProvider = otel.GetMeterProvider()
	if cfg.Telemetry != nil {
		mp = cfg.Telemetry.MeterProvider
	}
	k = &Keyguard{cfg: cfg, conn: conn, log: log, metrics: newMetrics(mp),
		work: make(chan string, 1024), pending: map[string]applyState{}, backends: map[string]backend{BackendLocal: localBackend{}}}
	if k.grants, err = grants.Open(ctx, conn.NC, conn.JS); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: %w", err)
	}
	if k.secrets, err = secrets.Open(ctx, conn.NC, conn.JS, master); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: %w", err)
	}
	clear(master)
	if k.nonces, err = conn.JS.KeyValue(ctx, events.BucketKeyguardNonces); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: nonce bucket: %w", err)
	}
	if k.nonceStream, err = conn.JS.Stream(ctx, "KV_"+events.BucketKeyguardNonces); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: nonce bucket stream: %w", err)
	}
	nl := cfg.Nonces
	k.vmNonces = newLimiter(nl.VMRate, nl.VMBurst, nl.Tracked)
	k.requesterNonces = newLimiter(nl.RequesterRate, nl.RequesterBurst, nl.Tracked)
	vc := cfg.Evidence.Verifier
	if vc.Collateral == nil {
		kv, err := collateral.OpenKV(ctx, conn.JS)
		if err != nil {
			return nil, closeConn, fmt.Errorf("keyguard: collateral cache: %w", err)
		}
		vc.Collateral = kv
	}
	if vc.Logger == nil {
		vc.Logger = log.With("component", "evidence")
	}
	if k.verifier, err = evidence.NewVerifier(vc); err != nil {
		return nil, closeConn, fmt.Errorf("keyguard: evidence verifier: %w", err)
	}
	for _, ac := range cfg.AzureKeyVaults {
		ab, err := newAzureBackend(k, ac)
		if err != nil {
			return nil, closeConn, err
		}
		k.backends[ab.b.Name()] = ab
	}
	if err := k.seed(ctx); err != nil {
		return nil, closeConn, err
	}
	return k, closeConn, nil
}

// run serves until ctx ends.
func (k *Keyguard) run(ctx context.Context) error {
	cfg, conn, log := k.cfg, k.conn, k.log
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 2)

	health := telemetry.NewHealth()
	health.AddLiveness("nats", telemetry.NATSConnected(conn.NC))
	health.AddReadiness("jetstream", telemetry.JetStreamReachable(conn.JS))
	var ready atomic.Bool
	health.AddReadiness("keyguard", func(context.Context) error {
		if !ready.Load() {
			return errors.New("starting: consumer and release service not up yet")
		}
		return nil
	})
	if cfg.HTTPAddr != "" {
		srv, err := telemetry.Listen(cfg.HTTPAddr, cfg.Telemetry, health)
		if err != nil {
			return fmt.Errorf("keyguard: %w", err)
		}
		log.Info("serving health and metrics", "addr", srv.Addr())
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.Serve(runCtx); err != nil {
				errc <- fmt.Errorf("keyguard: http: %w", err)
			}
		}()
	}

	serves := []struct {
		subject string
		h       bus.ServeHandler
	}{
		{keyrelease.SubjectNonce, k.handleNonce},
		{keyrelease.SubjectRelease, k.handleRelease},
		{SubjectAdminRestore, k.handleRestore},
		{SubjectAdminRevoke, k.handleRevoke},
		{SubjectAdminGrant, k.handleGrant},
	}
	for _, s := range serves {
		if _, err := conn.Serve(runCtx, s.subject, Queue, s.h); err != nil {
			return fmt.Errorf("keyguard: %w", err)
		}
	}
	for range cfg.ApplyWorkers {
		wg.Add(1)
		go func() { defer wg.Done(); k.applyWorker(runCtx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); k.reconcileLoop(runCtx) }()

	consuming := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := conn.Consume(runCtx, events.StreamEvents, consumerConfig(cfg.Consumer), k.handle,
			bus.WithConcurrency(cfg.Concurrency), bus.WithAlertSource(cfg.Source),
			bus.WithBackoff(50*time.Millisecond, 250*time.Millisecond, time.Second, 5*time.Second, 15*time.Second))
		if err != nil {
			errc <- err
		}
	}()
	// Consume creates the consumer before it fetches; wait until it exists
	// so that Ready means events published from now on are seen.
	go func() {
		defer close(consuming)
		for runCtx.Err() == nil {
			if _, err := conn.JS.Consumer(runCtx, events.StreamEvents, cfg.Consumer); err == nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	select {
	case <-consuming:
	case err := <-errc:
		return err
	}
	if err := runCtx.Err(); err != nil {
		return nil
	}
	ready.Store(true)
	log.Info("keyguard running", "backends", len(k.backends), "consumer", cfg.Consumer, "master_key_id", k.secrets.KeyID())
	if cfg.Ready != nil {
		cfg.Ready()
	}
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	}
}

// seed imports configured secrets and creates configured grants that do
// not exist yet.
func (k *Keyguard) seed(ctx context.Context) error {
	have, err := k.secrets.Names(ctx)
	if err != nil {
		return fmt.Errorf("keyguard: %w", err)
	}
	exists := map[string]bool{}
	for _, n := range have {
		exists[n] = true
	}
	for name, v := range k.cfg.ImportSecrets {
		if exists[name] {
			continue
		}
		if _, err := k.secrets.Put(ctx, name, v); err != nil {
			return fmt.Errorf("keyguard: import secret %s: %w", name, err)
		}
		k.log.Info("secret imported", "key", name)
	}
	create := func(vmSpec, vmID, key, backend string) error {
		vm, err := resolveVM(vmSpec)
		if err != nil {
			return err
		}
		resourceID := ""
		if vmSpec != vm {
			resourceID = vmSpec
		}
		_, _, err = k.createGrant(ctx, vm, resourceID, vmID, key, backend, "config", "configured grant")
		if err != nil && !errors.Is(err, grants.ErrExists) {
			return fmt.Errorf("keyguard: configured grant %s/%s: %w", vm, key, err)
		}
		return nil
	}
	for _, g := range k.cfg.Grants {
		if err := create(g.VM, g.VMID, g.Key, BackendLocal); err != nil {
			return err
		}
	}
	for _, ac := range k.cfg.AzureKeyVaults {
		name := ac.Name
		if name == "" {
			name = "azure-keyvault"
		}
		for _, m := range ac.Keys {
			if err := create(m.VM, m.VMID, m.Key, name); err != nil {
				return err
			}
		}
	}
	return nil
}
