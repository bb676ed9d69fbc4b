package keyguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/policyfeed"
	"github.com/vigil-cc/vigil/pkg/service"
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
	policy   *policyfeed.Feed // release policy in force
	backends map[string]backend
	metrics  *kgMetrics
	hooks    hooks

	// nonceStream is the nonce bucket's stream; vmNonces and
	// requesterNonces limit the rate of nonces per VM and per requester.
	nonceStream               jetstream.Stream
	vmNonces, requesterNonces *limiter

	// agents records the credentials enrollment issued and revoked;
	// enrollSources limits enrollment requests per source address;
	// revoker is the system-account connection revocations are pushed on
	// (nil without Enroll.Revoker).
	agents        *agentStore
	enrollSources *limiter
	revoker       *bus.Conn
	pushes        *pushGate
	settle        chan time.Time // when to push the revocations again (settleRevocations)

	work      chan string
	pendingMu sync.Mutex
	pending   map[string]applyState // grants queued for or in an apply worker
}

// Run runs keyguard until ctx ends: it consumes verdicts, status changes and
// lifecycle events and revokes, suspends and restores grants on every
// backend; it serves the key release API (vigil.keyguard.nonce.<vm> and
// vigil.keyguard.release.<vm>), the operator API
// (vigil.keyguard.admin.<action>.<actor>) and, with Enroll.Issuer, the
// agents' enrollment API over HTTP, revoking agents' credentials with
// Enroll.Revoker.
func Run(ctx context.Context, cfg Config) error { return run(ctx, cfg, hooks{}) }

// hooks are where tests act inside a running keyguard (export_test.go);
// a production keyguard has none.
type hooks struct {
	// sealed runs after a release's secret is sealed, before its final
	// checks.
	sealed func(vm string)
}

func run(ctx context.Context, cfg Config, h hooks) error {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	master, err := masterKey(cfg)
	if err != nil {
		return err
	}
	defer clear(master)
	svc, err := service.Start(ctx, "keyguard", cfg.Options)
	if err != nil {
		return err
	}
	k, err := open(svc.Context(), cfg, svc, master)
	if err == nil {
		k.hooks = h
		err = k.start(svc)
	}
	if err != nil {
		svc.Stop()
		return errors.Join(err, svc.Wait())
	}
	return svc.Wait()
}

// masterKey returns a copy of the configured master key, or reads it.
func masterKey(cfg Config) ([]byte, error) {
	if cfg.MasterKey != nil {
		return append([]byte(nil), cfg.MasterKey...), nil
	}
	mk, err := secrets.LoadMasterKey(cfg.MasterKeyFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	return mk, nil
}

// open opens every store and backend and seeds the configured secrets and
// grants.
func open(ctx context.Context, cfg Config, svc *service.Service, master []byte) (k *Keyguard, err error) {
	conn, log := svc.Conn, svc.Log.With("service", "keyguard")
	k = &Keyguard{cfg: cfg, conn: conn, log: log, metrics: newMetrics(svc.MeterProvider),
		work: make(chan string, 1024), settle: make(chan time.Time, 1), pushes: newPushGate(), pending: map[string]applyState{}, backends: map[string]backend{BackendLocal: localBackend{}}}
	if k.grants, err = grants.Open(ctx, conn.NC, conn.JS); err != nil {
		return nil, fmt.Errorf("keyguard: %w", err)
	}
	if k.secrets, err = secrets.Open(ctx, conn.NC, conn.JS, master); err != nil {
		return nil, fmt.Errorf("keyguard: %w", err)
	}
	if k.nonces, err = conn.JS.KeyValue(ctx, events.BucketKeyguardNonces); err != nil {
		return nil, fmt.Errorf("keyguard: nonce bucket: %w", err)
	}
	if k.nonceStream, err = conn.JS.Stream(ctx, "KV_"+events.BucketKeyguardNonces); err != nil {
		return nil, fmt.Errorf("keyguard: nonce bucket stream: %w", err)
	}
	if k.agents, err = openAgents(ctx, conn.NC, conn.JS); err != nil {
		return nil, err
	}
	if r := cfg.Enroll.Revoker; r != nil {
		if k.revoker, err = connectRevoker(ctx, cfg, r, log); err != nil {
			return nil, err
		}
	}
	nl := cfg.Nonces
	k.vmNonces = newLimiter(nl.VMRate, nl.VMBurst, nl.Tracked)
	k.requesterNonces = newLimiter(nl.RequesterRate, nl.RequesterBurst, nl.Tracked)
	vc := cfg.Evidence.Verifier
	if vc.Collateral == nil {
		kv, err := collateral.OpenKV(ctx, conn.JS)
		if err != nil {
			return nil, fmt.Errorf("keyguard: collateral cache: %w", err)
		}
		vc.Collateral = kv
	}
	if vc.Logger == nil {
		vc.Logger = log.With("component", "evidence")
	}
	if k.verifier, err = evidence.NewVerifier(vc); err != nil {
		return nil, fmt.Errorf("keyguard: evidence verifier: %w", err)
	}
	if k.policy, err = newPolicyFeed(conn.JS, cfg.Evidence, log); err != nil {
		return nil, err
	}
	for _, ac := range cfg.AzureKeyVaults {
		ab, err := newAzureBackend(k, ac)
		if err != nil {
			return nil, err
		}
		k.backends[ab.b.Name()] = ab
	}
	if err := k.seed(ctx); err != nil {
		return nil, err
	}
	return k, nil
}

// start serves the release and operator APIs and starts the event
// consumer, the apply workers, the reconcile loop and the policy follower
// as the service's tasks; it marks the service ready once the consumer
// exists, so that events published from then on are seen, and the stored
// policy versions are read.
func (k *Keyguard) start(svc *service.Service) error {
	ctx, cfg, conn := svc.Context(), k.cfg, k.conn
	serves := []struct {
		subject string
		h       bus.ServeHandler
	}{
		{events.SubjectKeyguardNonceAll, k.handleNonce},
		{events.SubjectKeyguardReleaseAll, k.handleRelease},
		{SubjectAdminRestore + ".*", k.handleRestore},
		{SubjectAdminRevoke + ".*", k.handleRevoke},
		{SubjectAdminGrant + ".*", k.handleGrant},
	}
	var opts []bus.ServeOption
	if conn.OperatorMode() {
		opts = append(opts, bus.WithReplyCheck(requesterReply))
	}
	for _, s := range serves {
		if _, err := conn.Serve(ctx, s.subject, Queue, s.h, opts...); err != nil {
			return fmt.Errorf("keyguard: %w", err)
		}
	}
	if err := k.serveEnroll(svc); err != nil {
		return err
	}
	if k.revoker != nil {
		svc.Go("revoker", func(ctx context.Context) error {
			<-ctx.Done()
			return k.revoker.Close()
		})
		svc.Go("revocation-settle", k.settleRevocations)
		// The servers may have been restarted, or given the account
		// without the revocations: tell them at start and with every
		// reconciliation.
		if err := k.pushRevocations(ctx); err != nil {
			k.log.ErrorContext(ctx, "push revocations", "err", err)
		}
	}
	for range cfg.ApplyWorkers {
		svc.Go("apply", func(ctx context.Context) error { k.applyWorker(ctx); return nil })
	}
	svc.Go("reconcile", func(ctx context.Context) error { k.reconcileLoop(ctx); return nil })
	svc.Go("policy", k.policy.Follow)
	svc.Go("consume", func(ctx context.Context) error {
		return conn.Consume(ctx, events.StreamEvents, consumerConfig(cfg.Consumer), k.handle,
			bus.WithConcurrency(cfg.Concurrency), bus.WithAlertSource(cfg.Source),
			bus.WithBackoff(50*time.Millisecond, 250*time.Millisecond, time.Second, 5*time.Second, 15*time.Second))
	})
	svc.Go("ready", func(ctx context.Context) error {
		// Releases wait for the policy versions stored (appraise).
		select {
		case <-ctx.Done():
			return nil
		case <-k.policy.Synced():
		}
		// Consume creates the consumer before it fetches.
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			if _, err := conn.JS.Consumer(ctx, events.StreamEvents, cfg.Consumer); err == nil {
				k.log.Info("keyguard running", "backends", len(k.backends), "consumer", cfg.Consumer, "master_key_id", k.secrets.KeyID())
				svc.MarkReady()
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	return nil
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

// requesterReply reports whether keyguard, in operator mode, answers a
// request on subject whose reply subject is reply: nonce and release
// requests on vigil.keyguard.{nonce,release}.<vm> only under that VM's
// agent's inbox (_INBOX_agent.<vm>), operator requests on
// vigil.keyguard.admin.<action>.<name> only under that administrator's
// (_INBOX_admin.<name>), the only principals allowed to make them.
// Keyguard may publish to every agent's and administrator's inbox; without
// this check a requester could have an answer published under another's.
func requesterReply(subject, reply string) bool {
	switch {
	case strings.HasPrefix(subject, subjectNoncePrefix) || strings.HasPrefix(subject, subjectReleasePrefix):
		vm := subject[strings.LastIndexByte(subject, '.')+1:]
		return events.ValidVMKey(vm) && strings.Count(subject, ".") == 3 && busauth.ReplyAllowed(busauth.AgentInboxPrefix(vm), reply)
	case strings.HasPrefix(subject, subjectAdminPrefix):
		rest := strings.TrimPrefix(subject, subjectAdminPrefix)
		_, name, ok := strings.Cut(rest, ".")
		return ok && busauth.ValidAdminName(name) && busauth.ReplyAllowed(busauth.AdminInboxPrefix(name), reply)
	}
	return false
}

// subjectNoncePrefix and subjectReleasePrefix prefix the key release API's
// subjects, vigil.keyguard.{nonce,release}.<vm>.
var (
	subjectNoncePrefix   = strings.TrimSuffix(events.SubjectKeyguardNonceAll, "*")
	subjectReleasePrefix = strings.TrimSuffix(events.SubjectKeyguardReleaseAll, "*")
)

// subjectAdminPrefix prefixes the operator API subjects.
const subjectAdminPrefix = "vigil.keyguard.admin."
