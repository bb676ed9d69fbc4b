package attestworker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/collateral"
	"github.com/vigil-cc/vigil/pkg/service"
)

// Service is the service name in events, logs and traces.
const Service = "attest-worker"

// Durable consumer names shared by every worker, so that each job, fired
// schedule and lifecycle event goes to exactly one of them.
const (
	ConsumerJobs      = "attest-worker"
	ConsumerSchedule  = "attest-worker-schedule"
	ConsumerLifecycle = "attest-worker-lifecycle"
)

// Config configures one attest-worker. Several workers with the same
// configuration share the fleet.
type Config struct {
	// Options are the bus connection, provisioning, operational listener,
	// health, telemetry, logger and readiness hook every service shares.
	service.Options
	// Name identifies this worker instance in logs and status records
	// (default: host name and process id).
	Name string
	// Concurrency bounds the attestations this worker runs at once, jobs
	// and fired schedules together (backpressure: neither consumer holds
	// more unacknowledged messages than this); default 64.
	Concurrency int
	// Timing sets the re-attestation interval, its jitter, the grace
	// period and the retry backoff. Zero fields are taken from the policy
	// in force (and follow its changes), then from the defaults (5 min,
	// ±10%, 2 min).
	Timing Timing
	// ChallengeTimeout bounds one challenge round trip (default 10 s).
	ChallengeTimeout time.Duration
	// AckWait is how long a job may stay unacknowledged (its worker died)
	// before JetStream hands it to another worker; running jobs are kept
	// in progress. Default 30 s, at least three challenge timeouts.
	AckWait time.Duration
	// MissedAfter is how late an attestation may start before its deadline
	// counts as missed (reported by metric, log and alert); default a fifth
	// of the interval, between 2 s and 1 min.
	MissedAfter time.Duration
	// SweepEvery is the period of the fleet sweep that finds missed
	// deadlines, stale VMs and unscheduled running VMs (default the
	// smaller of the interval and 1 min; at least 1 s).
	SweepEvery time.Duration
	// OnboardingLimit bounds how long a VM's first attestation waits for
	// the vmId ARM reports, when the policy checks vmIds (zero:
	// DefaultOnboardingLimit, 10 min): the VM stays pending without a
	// verdict until its vmId arrives (then it is attested at once), and
	// past the limit it is attested without it, its status saying so
	// (vm.vmid_not_reported). Negative: no wait (ingest without ARM, where
	// no vmId ever comes). It is also the grace period of a VM that has
	// never given valid evidence (Timing.Onboarding), unless Timing sets
	// one.
	OnboardingLimit time.Duration
	// Policy is what evidence must satisfy; default appraise.DefaultPolicy().
	// Newer versions published as io.vigil.policy.v1 on
	// vigil.events.policy.<policy id>.<actor> take effect as they arrive.
	Policy *appraise.Policy
	// Verifier configures evidence verification. When its Collateral is
	// nil, the shared vigil-collateral bucket is used.
	Verifier evidence.Config

	// explicitTiming is Timing as configured, before the policy's and the
	// default values filled it in.
	explicitTiming Timing
}

func (c Config) withDefaults() Config {
	if c.Name == "" {
		host, _ := os.Hostname()
		c.Name = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if c.Concurrency <= 0 {
		c.Concurrency = 64
	}
	if c.Policy == nil {
		c.Policy = appraise.DefaultPolicy()
	}
	if c.OnboardingLimit == 0 {
		c.OnboardingLimit = DefaultOnboardingLimit
	}
	if c.Timing.Onboarding <= 0 && c.OnboardingLimit > 0 {
		// A VM's first valid evidence may take the onboarding limit.
		c.Timing.Onboarding = c.OnboardingLimit
	}
	c.explicitTiming = c.Timing
	pt := policyTiming(c.Policy)
	if c.Timing.Interval <= 0 {
		c.Timing.Interval = pt.Interval
	}
	if c.Timing.Grace <= 0 {
		c.Timing.Grace = pt.Grace
	}
	c.Timing = c.Timing.withDefaults()
	if c.ChallengeTimeout <= 0 {
		c.ChallengeTimeout = 10 * time.Second
	}
	if c.AckWait <= 0 {
		c.AckWait = max(30*time.Second, 3*c.ChallengeTimeout)
	}
	if c.MissedAfter <= 0 {
		c.MissedAfter = min(max(c.Timing.Interval/5, 2*time.Second), time.Minute)
	}
	if c.SweepEvery <= 0 {
		c.SweepEvery = min(c.Timing.Interval, time.Minute)
	}
	c.SweepEvery = max(c.SweepEvery.Round(time.Second), time.Second)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Worker is one running attest-worker.
type Worker struct {
	cfg       Config
	conn      *bus.Conn
	log       *slog.Logger
	source    string
	status    statusStore
	inv       inventory
	statusKV  jetstream.KeyValue
	vmsKV     jetstream.KeyValue
	events    streamGetter
	jobs      jetstream.Stream
	sched     *scheduler
	appraiser appraiser
	metrics   *workerMetrics
	policies  *policies
	hooks     hooks
	// slots bounds the attestations running at once (Concurrency): jobs
	// and fired schedules come from two consumers and share it.
	slots chan struct{}
}

// Run attests the fleet until ctx ends. It provisions the streams and
// buckets, consumes jobs, fired schedules and lifecycle events, and returns
// nil after a clean shutdown (handlers in flight finish first).
func Run(ctx context.Context, cfg Config) error { return run(ctx, cfg, hooks{}) }

// hooks are where tests observe a worker or replace part of it; a
// production worker has none.
type hooks struct {
	// point is called at named points of a job: "appraised" before the
	// verdict is stored, "verdict" after it, "status" after the status
	// write.
	point func(point, vm string)
	// record receives every job with the status record it produced.
	record func(job events.Job, st events.VMStatus)
	// appraiser replaces evidence verification (the benchmark's measure
	// of the pipeline without verification).
	appraiser appraiser
	// follow wraps the policy follower (to hold it back).
	follow func(ctx context.Context, follow func(context.Context) error) error
}

func run(ctx context.Context, cfg Config, h hooks) error {
	cfg = cfg.withDefaults()
	if err := cfg.Timing.validate(); err != nil {
		return err
	}
	svc, err := service.Start(ctx, Service, cfg.Options)
	if err != nil {
		return err
	}
	w, err := newWorker(svc.Context(), cfg, svc, h)
	if err != nil {
		svc.Stop()
		return errors.Join(err, svc.Wait())
	}
	if err := w.start(svc); err != nil {
		svc.Stop()
		return errors.Join(err, svc.Wait())
	}
	return svc.Wait()
}

func newWorker(ctx context.Context, cfg Config, svc *service.Service, h hooks) (*Worker, error) {
	conn := svc.Conn
	statusKV, err := conn.JS.KeyValue(ctx, events.BucketStatus)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: open %s: %w", events.BucketStatus, err)
	}
	vmsKV, err := conn.JS.KeyValue(ctx, events.BucketVMs)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: open %s: %w", events.BucketVMs, err)
	}
	evStream, err := conn.JS.Stream(ctx, events.StreamEvents)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: open %s: %w", events.StreamEvents, err)
	}
	jobsStream, err := conn.JS.Stream(ctx, events.StreamJobs)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: open %s: %w", events.StreamJobs, err)
	}
	schedStream, err := conn.JS.Stream(ctx, events.StreamSchedule)
	if err != nil {
		return nil, fmt.Errorf("attest-worker: open %s: %w", events.StreamSchedule, err)
	}
	vcfg := cfg.Verifier
	if vcfg.Collateral == nil {
		kv, err := collateral.OpenKV(ctx, conn.JS)
		if err != nil {
			return nil, err
		}
		vcfg.Collateral = kv
	}
	if vcfg.Logger == nil {
		vcfg.Logger = cfg.Logger
	}
	log := cfg.Logger.With("worker", cfg.Name)
	pols, err := newPolicies(conn.JS, cfg.Policy, cfg.explicitTiming, log)
	if err != nil {
		return nil, err
	}
	var ap appraiser
	ap, err = newEvidenceAppraiser(vcfg, pols.policy)
	if err != nil {
		return nil, err
	}
	if h.appraiser != nil {
		ap = h.appraiser
	}
	source := "vigil/" + Service + "/" + cfg.Name
	return &Worker{
		cfg:       cfg,
		conn:      conn,
		log:       log,
		source:    source,
		status:    statusStore{kv: statusKV},
		inv:       inventory{kv: vmsKV},
		statusKV:  statusKV,
		vmsKV:     vmsKV,
		events:    evStream,
		jobs:      jobsStream,
		sched:     &scheduler{conn: conn, stream: schedStream, source: source},
		appraiser: ap,
		metrics:   newWorkerMetrics(svc.MeterProvider),
		policies:  pols,
		hooks:     h,
		slots:     make(chan struct{}, cfg.Concurrency),
	}, nil
}

// start starts the worker's policy follower and, once it has read the
// published policy versions, its consumers, as the service's tasks, and
// then marks the service ready: nothing is appraised under a policy the
// bus has superseded, nor scheduled with its timing.
func (w *Worker) start(svc *service.Service) error {
	if err := w.sched.ensureSweep(svc.Context(), w.cfg.SweepEvery); err != nil {
		return err
	}
	follow := w.policies.feed.Follow
	if h := w.hooks.follow; h != nil {
		follow = func(ctx context.Context) error { return h(ctx, w.policies.feed.Follow) }
	}
	svc.Go("policy", follow)
	svc.Go("start", func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return nil
		case <-w.policies.feed.Synced():
		}
		w.consume(svc)
		return nil
	})
	return nil
}

// consume starts the worker's consumers and marks the service ready.
func (w *Worker) consume(svc *service.Service) {
	consume := func(name, stream string, cc jetstream.ConsumerConfig, h bus.Handler, opts ...bus.ConsumeOption) {
		svc.Go(name, func(ctx context.Context) error {
			return w.conn.Consume(ctx, stream, cc, h, append(opts, bus.WithAlertSource(Service))...)
		})
	}
	ackWait := w.cfg.AckWait
	consume("jobs", events.StreamJobs, jetstream.ConsumerConfig{
		Durable:       ConsumerJobs,
		Description:   "attest-worker: attestation jobs",
		FilterSubject: events.SubjectAttestJobsAll,
		AckWait:       ackWait,
		MaxAckPending: -1,
	}, w.handleJob, bus.WithConcurrency(w.cfg.Concurrency), bus.WithAckNoWait())
	consume("schedule", events.StreamSchedule, jetstream.ConsumerConfig{
		Durable:       ConsumerSchedule,
		Description:   "attest-worker: scheduled attestations as they fire, and the fleet sweep",
		FilterSubject: events.SubjectScheduleDue,
		AckWait:       ackWait,
		MaxAckPending: -1,
	}, w.handleDue, bus.WithConcurrency(w.cfg.Concurrency), bus.WithAckNoWait())
	consume("lifecycle", events.StreamEvents, jetstream.ConsumerConfig{
		Durable:       ConsumerLifecycle,
		Description:   "attest-worker: lifecycle events into suspended, retired and pending",
		FilterSubject: events.VMEventSubject("*", events.KindLifecycle),
		AckWait:       ackWait,
		MaxAckPending: -1,
	}, w.handleLifecycle, bus.WithConcurrency(8))
	svc.Go("inventory", w.watchInventory)
	t := w.policies.timing()
	w.log.Info("attest-worker running", "policy", w.policies.policy().ID, "policy_version", w.policies.policy().Version,
		"interval", t.Interval, "grace", t.Grace, "jitter", t.Jitter, "concurrency", w.cfg.Concurrency, "sweep_every", w.cfg.SweepEvery, "missed_after", w.cfg.MissedAfter, "onboarding_limit", w.cfg.OnboardingLimit)
	svc.MarkReady()
}
