package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

func newProvisionCmd() *cobra.Command {
	var (
		nf       natsFlags
		replicas int
		timeout  time.Duration
	)
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Create or update every stream and bucket (as an administrator)",
		Long: `provision creates every JetStream stream and KV bucket of Vigil (docs/design.md §3, §4), or
updates existing ones to the current definition where NATS allows, and prints what it did
with each. It is idempotent. Replica counts are raised, never lowered. In operator mode only
administrators may create and update streams: give it an administrator's credentials
("vigil auth init" makes the first, "vigil auth admin" others). A change NATS cannot make
in place (a storage type, a retention policy) fails, naming the stream.`,
		Example: `  vigil provision --nats-url nats://nats-1:4222 --nats-creds ./auth/creds/admin.creds --replicas 3`,
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := nf.validate(); err != nil {
				return usageError("%v", err)
			}
			if replicas != 1 && replicas != 3 {
				return usageError("--replicas %d: 1 (one server) or 3 (a cluster)", replicas)
			}
			if timeout <= 0 {
				return usageError("--timeout %s: must be positive", timeout)
			}
			cfg, err := provisionConfig(&nf)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			c, err := bus.Connect(ctx, cfg)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			defer func() { _ = c.Close() }()
			// A cluster that has just formed answers JetStream requests
			// only once it has a meta leader.
			if err := bus.WaitJetStream(ctx, c.JS, 0); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			if err := provision(ctx, cmd.OutOrStdout(), c.JS, events.Topology{Replicas: replicas}); err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			return nil
		},
	}
	nf.register(cmd.Flags())
	cmd.Flags().IntVar(&replicas, "replicas", 1, "replicas of every stream and bucket: 1, or 3 on a cluster")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError("%v", err) })
	return cmd
}

// provisionConfig is the connection of nf, with the inbox prefix of the
// user of its credentials file: in operator mode an administrator hears
// JetStream's answers on its own prefix only. Credentials of another
// principal are refused before connecting.
func provisionConfig(nf *natsFlags) (bus.Config, error) {
	cfg := nf.busConfig("vigil provision")
	cfg.DrainTimeout = 2 * time.Second
	c, err := nf.credentials()
	if err != nil {
		return bus.Config{}, err
	}
	if c.Principal != "" && c.Principal != busauth.Admin {
		return bus.Config{}, usageError(`--nats-creds: these are the credentials of %s %s; provisioning takes an administrator's ("vigil auth admin")`, c.Principal, c.Name)
	}
	return cfg, nil
}

// provision provisions topo (events.Provision), prints for each stream and
// bucket whether it was created, updated or left unchanged, and checks the
// result as the services do (events.CheckTopology).
func provision(ctx context.Context, w io.Writer, js jetstream.JetStream, topo events.Topology) error {
	type item struct{ kind, name, stream string }
	var items []item
	for _, s := range events.Streams(topo) {
		items = append(items, item{"stream", s.Name, s.Name})
	}
	for _, b := range events.Buckets(topo) {
		items = append(items, item{"bucket", b.Bucket, "KV_" + b.Bucket})
	}
	before := make([]*jetstream.StreamConfig, len(items))
	for i, it := range items {
		cfg, err := streamConfig(ctx, js, it.stream)
		if err != nil {
			return err
		}
		before[i] = cfg
	}
	if err := events.Provision(ctx, js, topo); err != nil {
		return err
	}
	for i, it := range items {
		after, err := streamConfig(ctx, js, it.stream)
		if err != nil {
			return err
		}
		if after == nil {
			return fmt.Errorf("%s %s is missing after provisioning", it.kind, it.name)
		}
		did := "unchanged"
		switch {
		case before[i] == nil:
			did = "created"
		case !reflect.DeepEqual(*before[i], *after):
			did = "updated"
		}
		fmt.Fprintf(w, "%-7s %-22s %-9s replicas %d\n", it.kind, it.name, did, after.Replicas)
	}
	// What the services will check at their start.
	if err := events.CheckTopology(ctx, js, topo); err != nil {
		return err
	}
	fmt.Fprintf(w, "every stream and bucket is provisioned as required (%d replicas)\n", max(topo.Replicas, 1))
	return nil
}

// streamConfig is the configuration of the stream name, nil when there
// is no such stream.
func streamConfig(ctx context.Context, js jetstream.JetStream, name string) (*jetstream.StreamConfig, error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up stream %s: %w", name, err)
	}
	cfg := s.CachedInfo().Config
	return &cfg, nil
}
