// Command vigil-ingest receives Azure VM lifecycle events (Event Grid
// webhook, Event Grid namespace pull, ARM reconcile) and turns them into
// Vigil lifecycle events, configuration findings and attestation jobs.
//
// Every flag has a VIGIL_* environment fallback (flag -foo-bar reads
// VIGIL_FOO_BAR). The webhook requires a shared secret
// (VIGIL_WEBHOOK_SECRET) or Entra ID validation.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/telemetry"
	"github.com/vigil-cc/vigil/services/ingest"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vigil-ingest:", err)
		if errors.Is(err, ingest.ErrConfig) || errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

func run() error {
	fs := flag.NewFlagSet("vigil-ingest", flag.ContinueOnError)
	str := func(name, def, usage string) *string {
		return fs.String(name, env(name, def), usage+" (env "+envName(name)+")")
	}
	var (
		natsURL    = str("nats-url", bus.DefaultURL, "NATS server URL(s), comma separated")
		natsCreds  = str("nats-creds", "", "NATS credentials file")
		natsCA     = str("nats-ca", "", "CA file for NATS TLS")
		natsCert   = str("nats-cert", "", "client certificate for NATS TLS")
		natsKey    = str("nats-key", "", "client key for NATS TLS")
		replicas   = str("replicas", "1", "stream and bucket replicas (3 on a cluster)")
		httpAddr   = str("http", ":8080", "listen address of the webhook, /healthz, /readyz and /metrics")
		path       = str("webhook-path", ingest.DefaultWebhookPath, "webhook path")
		secret     = str("webhook-secret", "", "shared secret Event Grid sends as ?secret=...")
		secretNext = str("webhook-secret-next", "", "second accepted secret, for rotation")
		tenant     = str("entra-tenant", "", "Entra ID tenant: validate bearer tokens on deliveries")
		audience   = str("entra-audience", "", "accepted token audiences, comma separated")
		clientIDs  = str("entra-client-ids", "", "allowed callers (appid/azp), comma separated")
		subs       = str("subscriptions", "", "Azure subscription IDs to reconcile, comma separated")
		interval   = str("reconcile-interval", ingest.DefaultReconcileInterval.String(), "reconcile interval (0 or negative: off)")
		armURL     = str("arm-endpoint", "", "ARM endpoint (default: Azure public cloud)")
		armToken   = str("arm-static-token", "", "fixed bearer token for ARM instead of an Entra ID credential (simulated ARM APIs only)")
		nsEndpoint = str("namespace-endpoint", "", "Event Grid namespace endpoint to pull from")
		nsTopic    = str("namespace-topic", "", "namespace topic")
		nsSub      = str("namespace-subscription", "", "namespace event subscription")
		nsKey      = str("namespace-key", "", "namespace access key (default: Entra ID credential)")
		logLevel   = str("log-level", "info", "log level: debug, info, warn, error")
	)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	level, err := telemetry.ParseLevel(*logLevel)
	if err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	log := telemetry.Logger("vigil-ingest", os.Stderr, level)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tel, err := telemetry.Setup(ctx, telemetry.Config{Service: "vigil-ingest", SetGlobal: true, Logger: log})
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tel.Shutdown(sctx)
	}()

	reconcileEvery, err := time.ParseDuration(*interval)
	if err != nil {
		return fmt.Errorf("%w: -reconcile-interval: %w", errUsage, err)
	}
	if reconcileEvery <= 0 {
		reconcileEvery = -1
	}
	var topoReplicas int
	if _, err := fmt.Sscan(*replicas, &topoReplicas); err != nil || (topoReplicas != 1 && topoReplicas != 3) {
		return fmt.Errorf("%w: -replicas must be 1 or 3", errUsage)
	}

	cfg := ingest.Config{
		NATS: bus.Config{URL: *natsURL, Name: "vigil-ingest", CredsFile: *natsCreds,
			TLSCAFile: *natsCA, TLSCertFile: *natsCert, TLSKeyFile: *natsKey},
		HTTPAddr:           *httpAddr,
		WebhookPath:        *path,
		WebhookSecrets:     []string{*secret, *secretNext},
		RequireWebhookAuth: true,
		Subscriptions:      list(*subs),
		ReconcileInterval:  reconcileEvery,
		Telemetry:          tel,
		Logger:             log,
	}
	cfg.Topology.Replicas = topoReplicas
	if *tenant != "" || *audience != "" {
		cfg.Entra = eventgrid.EntraConfig{TenantID: *tenant, Audiences: list(*audience), AllowedClientIDs: list(*clientIDs)}
	}
	var cred azcore.TokenCredential
	needCred := len(cfg.Subscriptions) > 0 || (*nsEndpoint != "" && *nsKey == "")
	switch {
	case *armToken != "":
		cred = staticToken(*armToken)
	case needCred:
		c, err := azidentity.NewDefaultAzureCredential(nil)
		if err != nil {
			return fmt.Errorf("%w: Azure credential: %w", ingest.ErrConfig, err)
		}
		cred = c
	}
	if len(cfg.Subscriptions) > 0 {
		cfg.ARM = arm.Config{Credential: cred, Endpoint: *armURL}
	}
	if *nsEndpoint != "" {
		ns := &namespace.Config{Endpoint: *nsEndpoint, Topic: *nsTopic, Subscription: *nsSub, Key: *nsKey}
		if *nsKey == "" {
			ns.Credential = cred
		}
		cfg.Namespace = ns
	}
	return ingest.Run(ctx, cfg)
}

func envName(flagName string) string {
	return "VIGIL_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func env(flagName, def string) string {
	if v, ok := os.LookupEnv(envName(flagName)); ok {
		return v
	}
	return def
}

func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// staticToken is a credential with a fixed token, for simulated ARM APIs.
type staticToken string

func (t staticToken) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(t), ExpiresOn: time.Now().Add(time.Hour)}, nil
}
