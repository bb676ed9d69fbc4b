package main

import (
	"context"
	"strings"
	"testing"

	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-replicas", "2"},
		{"-reconcile-interval", "hourly"},
		{"-log-level", "loud"},
		{"-nats-url", "nats://127.0.0.1:1"},                                                         // no webhook secret
		{"-nats-url", "nats://127.0.0.1:1", "-webhook-secret", "short"},                             // too short
		{"-webhook-secret", "0123456789abcdef0123", "stray"},                                        // positional argument
		{"-webhook-secret", "0123456789abcdef0123", "-event-clock-skew", "0s"},                      // no bound on event times
		{"-webhook-secret", "0123456789abcdef0123", "-event-clock-skew", "-1m"},                     // likewise
		{"-webhook-secret", "0123456789abcdef0123", "-event-clock-skew", "2h"},                      // too lax a bound
		{"-webhook-secret", "0123456789abcdef0123", "-entra-client-ids", eventgrid.EventGridAppID},  // without Entra validation
		{"-entra-tenant", "t", "-entra-audience", "api://vigil", "-entra-client-ids", "event-grid"}, // not an application id
		{"-entra-tenant", "t", "-entra-audience", "api://vigil", "-entra-role", "Subscriber,Other"}, // one role
	} {
		var stderr strings.Builder
		if code := svcmain.Run(context.Background(), "vigil-ingest", args, &stderr, define); code != 2 {
			t.Errorf("%q: exit %d, want 2 (usage): %s", args, code, stderr.String())
		}
	}
}
