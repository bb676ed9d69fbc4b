// Command vigil-notifier delivers Vigil's alerts to the subscriptions'
// sinks (webhooks, Slack, Teams, PagerDuty, Alertmanager): one durable
// consumer per subscription, at least once, with firing and resolved
// notifications (docs/alerts.md).
//
// Every flag has a VIGIL_* environment fallback (flag -key-file reads
// VIGIL_KEY_FILE).
package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/notifier"
)

func main() { svcmain.Main("vigil-notifier", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-notifier", ":8086")
	keyFile := f.String("key-file", "", "the notifier's private key file, which opens the subscriptions' sealed sinks (required)")
	genKey := f.Bool("generate-key", false, "create the key file on first run if it does not exist")
	allowPrivate := f.Bool("allow-private-sinks", false, "let sinks be http and resolve to loopback, private, link-local or IMDS addresses (dev and tests only)")
	dlqAfter := f.Duration("dlq-after", notifier.DefaultDLQAfter, "how long an alert is retried on 5xx, 429 and timeouts before it goes to the dead-letter stream")
	unhealthy := f.Duration("unhealthy-after", notifier.DefaultUnhealthyAfter, "how long a subscription may fail before it is marked unhealthy and an alert says so")
	ackWait := f.Duration("ack-wait", notifier.DefaultAckWait, "how long after a crash an alert in delivery is delivered again (the consumers' AckWait)")
	concurrency := f.Int("concurrency", notifier.DefaultConcurrency, "deliveries in flight per subscription")
	source := f.String("source", notifier.DefaultSource, "the notifications' CloudEvents source")
	console := f.String("console-url", "", "link to the console, in notifications")
	f.Check(func() error {
		if *concurrency < 1 {
			return fmt.Errorf("-concurrency %d: must be at least 1", *concurrency)
		}
		return nil
	})
	return func(ctx context.Context, rt svcmain.Runtime) error {
		err := notifier.Run(ctx, notifier.Config{
			Options:           options(rt),
			KeyFile:           *keyFile,
			GenerateKey:       *genKey,
			AllowPrivateSinks: *allowPrivate,
			DLQAfter:          *dlqAfter,
			UnhealthyAfter:    *unhealthy,
			Concurrency:       *concurrency,
			AckWait:           *ackWait,
			Source:            *source,
			ConsoleURL:        *console,
		})
		if errors.Is(err, notifier.ErrConfig) {
			return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
		}
		return err
	}
}
