package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/vigil-cc/vigil/cmd/vigil/internal/devenv"
	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/services/notifier"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// devAlertWebhookID is the subscription `vigil dev --alert-webhook` makes.
const devAlertWebhookID = "dev-alert-webhook"

// devAlertWebhookSecret signs the deliveries to --alert-webhook unless
// --alert-webhook-secret says otherwise (a dev default: loopback only).
const devAlertWebhookSecret = "whsec_dmlnaWwtZGV2LWFsZXJ0LXdlYmhvb2stc2VjcmV0"

// notifierComponent runs the notifier (sinks may be private: dev) and,
// with --alert-webhook, subscribes that webhook to every alert once the
// notifier is ready.
func (d *devRun) notifierComponent() devenv.Component {
	return devenv.Component{Name: "notifier", Run: func(ctx context.Context, env *devenv.Env) error {
		dir := filepath.Join(d.dataDir, "notifier")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		opts, err := d.options(env, "notifier", busauth.Notifier)
		if err != nil {
			return err
		}
		ready := make(chan struct{})
		opts.Ready = func() { close(ready) }
		done := make(chan error, 1)
		go func() {
			done <- notifier.Run(ctx, notifier.Config{Options: opts, KeyFile: filepath.Join(dir, "notifier.key"), GenerateKey: true, AllowPrivateSinks: true})
		}()
		select {
		case <-ready:
		case err := <-done:
			return err
		}
		if d.o.alertWebhook != "" {
			if err := d.subscribeDevWebhook(ctx, env); err != nil {
				env.Logger.ErrorContext(ctx, "subscribe --alert-webhook", "err", err)
			}
		}
		return <-done
	}}
}

// subscribeDevWebhook (re)creates the --alert-webhook subscription, as
// the administrator.
func (d *devRun) subscribeDevWebhook(ctx context.Context, env *devenv.Env) error {
	c := d.conn
	if c == nil {
		cfg := bus.Config{URL: env.URL, Name: "vigil dev alerts", CredsFile: env.AdminCredsFile(), InboxPrefix: busauth.AdminInboxPrefix(busauth.DefaultAdminName)}
		var err error
		if c, err = bus.Connect(ctx, cfg); err != nil {
			return err
		}
		defer c.Close()
	}
	store, err := notifier.OpenStore(ctx, c.JS)
	if err != nil {
		return err
	}
	if err := store.DeleteSubscription(ctx, devAlertWebhookID); err != nil && !errors.Is(err, notifier.ErrNotFound) {
		return err
	}
	secret := d.o.alertWebhookSecret
	if secret == "" {
		secret = devAlertWebhookSecret
	}
	client := sink.NewClient(sink.ClientOptions{AllowPrivate: true, UserAgent: "vigil-dev"})
	sub, err := store.Subscribe(ctx, notifier.Request{ID: devAlertWebhookID, Description: "vigil dev --alert-webhook", Protocol: sink.ProtocolWebhook,
		URL: d.o.alertWebhook, Secrets: sink.Secrets{WebhookSecrets: []string{secret}}, Actor: "vigil-dev", Origin: "vigil-dev"}, client)
	if err != nil {
		return fmt.Errorf("subscribe %s: %w", sink.RedactURL(d.o.alertWebhook), err)
	}
	env.Logger.InfoContext(ctx, "alerts subscribed", "subscription", sub.ID, "sink", sub.Sink)
	return nil
}
