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
	"fmt"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/ingest"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
	"github.com/vigil-cc/vigil/services/ingest/namespace"
)

func main() { svcmain.Main("vigil-ingest", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-ingest", ":8085")
	webhookAddr := f.String("webhook-http", ":8080", "listen address of the webhook (it serves nothing else)")
	path := f.String("webhook-path", ingest.DefaultWebhookPath, "webhook path")
	secret := f.String("webhook-secret", "", "shared secret Event Grid sends as ?secret=...")
	secretNext := f.String("webhook-secret-next", "", "second accepted secret, for rotation")
	tenant := f.String("entra-tenant", "", "Entra ID tenant: validate bearer tokens on deliveries")
	audience := f.String("entra-audience", "", "accepted token audiences, comma separated")
	clientIDs := f.String("entra-client-ids", "", "applications allowed to deliver (token appid/azp), comma separated (default: Azure Event Grid's, "+eventgrid.EventGridAppID+")")
	role := f.String("entra-role", "", "app role the delivering application's token must also carry (roles claim)")
	subs := f.String("subscriptions", "", "Azure subscription IDs to reconcile, comma separated")
	interval := f.Duration("reconcile-interval", ingest.DefaultReconcileInterval, "reconcile interval (0 or negative: off)")
	skew := f.Duration("event-clock-skew", eventgrid.DefaultMaxClockSkew, "how far ahead of this clock an event's time may be; later events are refused (at most 1h)")
	f.Check(func() error {
		if *skew <= 0 || *skew > ingest.MaxEventClockSkew {
			return fmt.Errorf("-event-clock-skew %s: must be more than 0 and at most %s", *skew, ingest.MaxEventClockSkew)
		}
		return nil
	})
	armURL := f.String("arm-endpoint", "", "ARM endpoint (default: Azure public cloud)")
	armToken := f.String("arm-static-token", "", "fixed bearer token for ARM instead of an Entra ID credential (simulated ARM APIs only)")
	nsEndpoint := f.String("namespace-endpoint", "", "Event Grid namespace endpoint to pull from")
	nsTopic := f.String("namespace-topic", "", "namespace topic")
	nsSub := f.String("namespace-subscription", "", "namespace event subscription")
	nsKey := f.String("namespace-key", "", "namespace access key (default: Entra ID credential)")
	return func(ctx context.Context, rt svcmain.Runtime) error {
		reconcileEvery := *interval
		if reconcileEvery <= 0 {
			reconcileEvery = -1
		}
		cfg := ingest.Config{
			Options:            options(rt),
			WebhookAddr:        *webhookAddr,
			WebhookPath:        *path,
			WebhookSecrets:     []string{*secret, *secretNext},
			Limits:             eventgrid.Limits{MaxClockSkew: *skew},
			RequireWebhookAuth: true,
			Subscriptions:      list(*subs),
			ReconcileInterval:  reconcileEvery,
		}
		switch {
		case *tenant != "" || *audience != "":
			cfg.Entra = eventgrid.EntraConfig{TenantID: *tenant, Audiences: list(*audience), AllowedClientIDs: list(*clientIDs), RequiredRole: *role}
		case *clientIDs != "" || *role != "":
			return fmt.Errorf("%w: -entra-client-ids and -entra-role need Entra ID validation (-entra-tenant, -entra-audience)", svcmain.ErrUsage)
		}
		var cred azcore.TokenCredential
		switch {
		case *armToken != "":
			cred = staticToken(*armToken)
		case len(cfg.Subscriptions) > 0 || (*nsEndpoint != "" && *nsKey == ""):
			c, err := azidentity.NewDefaultAzureCredential(nil)
			if err != nil {
				return fmt.Errorf("%w: Azure credential: %w", svcmain.ErrUsage, err)
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
		err := ingest.Run(ctx, cfg)
		if errors.Is(err, ingest.ErrConfig) {
			return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
		}
		return err
	}
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
