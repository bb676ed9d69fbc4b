package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
)

// flagEnv returns the value of the environment variable key, or def when it
// is unset or empty: the default of a flag with an environment fallback.
func flagEnv(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func newEventsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Read events from the Vigil bus",
	}
	cmd.AddCommand(newEventsTailCmd())
	return cmd
}

// tailOptions are the flags of `vigil events tail`.
type tailOptions struct {
	natsFlags
	subject        string
	count          int
	timeout        time.Duration
	connectTimeout time.Duration
	pollInterval   time.Duration // work-queue streams are polled
}

func newEventsTailCmd() *cobra.Command {
	o := &tailOptions{pollInterval: 250 * time.Millisecond}
	cmd := &cobra.Command{
		Use:   "tail",
		Short: "Print stored events as JSON lines, one CloudEvent per line",
		Long: `Print the events stored on the bus from the start, one CloudEvent (JSON) per line,
then keep printing new ones as they arrive.

The events come from the stream that stores --subject (VIGIL_EVENTS for the default
vigil.events.>; VIGIL_ALERTS for vigil.alert.>, and so on; a subject that spans several
streams reads all of them). Work-queue streams (VIGIL_JOBS) show the jobs still pending.

It ends with exit status 0 once --count events were printed or --timeout has passed,
and with a non-zero status at once when NATS cannot be reached.`,
		Example: `  vigil events tail --count 10
  vigil events tail --subject 'vigil.events.vm.*.verdict' --timeout 30s
  vigil events tail --nats-url nats://nats.example:4222 --nats-creds ops.creds --subject 'vigil.alert.>'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runTail(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	o.natsFlags.register(f)
	f.StringVarP(&o.subject, "subject", "s", events.SubjectEventsAll, "subject filter (NATS wildcards * and > allowed)")
	f.IntVarP(&o.count, "count", "n", 0, "exit after printing this many events (0: no limit)")
	f.DurationVar(&o.timeout, "timeout", 0, "exit after this long (0: no limit)")
	f.DurationVar(&o.connectTimeout, "connect-timeout", 3*time.Second, "give up connecting to NATS after this long")
	return cmd
}

func (o *tailOptions) validate() error {
	switch {
	case o.count < 0:
		return fmt.Errorf("--count %d: must not be negative", o.count)
	case o.timeout < 0:
		return fmt.Errorf("--timeout %s: must not be negative", o.timeout)
	case o.connectTimeout <= 0:
		return fmt.Errorf("--connect-timeout %s: must be positive", o.connectTimeout)
	}
	if err := o.natsFlags.validate(); err != nil {
		return err
	}
	if err := validSubjectFilter(o.subject); err != nil {
		return fmt.Errorf("--subject %q: %w", o.subject, err)
	}
	return nil
}

// validSubjectFilter accepts a NATS subject with wildcards: dot-separated
// non-empty tokens without spaces, '*' as a whole token, '>' only last.
func validSubjectFilter(s string) error {
	if s == "" {
		return errors.New("empty subject")
	}
	toks := strings.Split(s, ".")
	for i, t := range toks {
		switch {
		case t == "":
			return errors.New("empty token")
		case strings.ContainsAny(t, " \t\r\n"):
			return errors.New("whitespace in subject")
		case t == ">" && i != len(toks)-1:
			return errors.New("'>' must be the last token")
		case t != ">" && t != "*" && strings.ContainsAny(t, "*>"):
			return fmt.Errorf("wildcard inside token %q", t)
		}
	}
	return nil
}

func (o *tailOptions) natsOptions(stderr io.Writer) []nats.Option {
	opts := []nats.Option{
		nats.Name("vigil events tail"),
		nats.Timeout(o.connectTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				fmt.Fprintf(stderr, "vigil: disconnected from NATS (%v); reconnecting\n", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			fmt.Fprintf(stderr, "vigil: reconnected to %s\n", bus.RedactURL(nc.ConnectedUrl()))
		}),
	}
	if o.creds != "" {
		opts = append(opts, nats.UserCredentials(o.creds))
	}
	if p := o.inboxPrefix(); p != "" {
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	if o.ca != "" {
		opts = append(opts, nats.RootCAs(o.ca))
	}
	if o.cert != "" {
		opts = append(opts, nats.ClientCert(o.cert, o.key))
	}
	return opts
}

// tailed is one stored message on its way to the output.
type tailed struct {
	stream  string
	subject string
	seq     uint64
	data    []byte
}

func runTail(ctx context.Context, o *tailOptions, stdout, stderr io.Writer) error {
	if err := o.validate(); err != nil {
		return &exitError{code: 2, msg: err.Error()}
	}
	nc, err := nats.Connect(o.url, o.natsOptions(stderr)...)
	if err != nil {
		return fmt.Errorf("cannot connect to NATS at %s: %w (is `vigil dev` running?)", bus.RedactURL(o.url), err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}

	if o.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.timeout)
		defer cancel()
	}
	streams, err := streamsFor(ctx, js, o.subject, o.connectTimeout)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := make(chan tailed)
	errc := make(chan error, len(streams))
	for _, s := range streams {
		go func() { errc <- readStream(ctx, s, o, out) }()
	}

	printed := 0
	for o.count == 0 || printed < o.count {
		select {
		case <-ctx.Done():
			return nil // --timeout passed, or interrupted
		case err := <-errc:
			if err != nil && ctx.Err() == nil {
				return err
			}
		case m := <-out:
			line, err := eventLine(m.data)
			if err != nil {
				fmt.Fprintf(stderr, "vigil: skipping %s message %d on %s: %v\n", m.stream, m.seq, m.subject, err)
				continue
			}
			if _, err := stdout.Write(line); err != nil {
				return fmt.Errorf("write: %w", err)
			}
			printed++
		}
	}
	return nil
}

// streamsFor returns the streams that store subject, in name order.
func streamsFor(ctx context.Context, js jetstream.JetStream, subject string, timeout time.Duration) ([]jetstream.Stream, error) {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lister := js.StreamNames(lctx, jetstream.WithStreamListSubject(subject))
	var names []string
	for n := range lister.Name() {
		names = append(names, n)
	}
	if err := lister.Err(); err != nil {
		if errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			return nil, fmt.Errorf("JetStream is not enabled on this NATS server: %w", err)
		}
		return nil, fmt.Errorf("list streams: %w", err)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("no stream stores subject %q (Vigil's streams hold vigil.events.>, vigil.alert.>, vigil.jobs.>, vigil.ingest.raw.> and vigil.audit.checkpoint; on a fresh server, vigil dev or any Vigil service provisions them)", subject)
	}
	slices.Sort(names)
	streams := make([]jetstream.Stream, 0, len(names))
	for _, n := range names {
		s, err := js.Stream(lctx, n)
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", n, err)
		}
		streams = append(streams, s)
	}
	return streams, nil
}

// readStream sends every message of s on subject to out, from the first
// one stored, until ctx ends.
func readStream(ctx context.Context, s jetstream.Stream, o *tailOptions, out chan<- tailed) error {
	info := s.CachedInfo()
	if info.Config.Retention == jetstream.WorkQueuePolicy {
		// A work queue takes no second consumer that overlaps the workers'
		// one; read the pending messages without consuming them.
		return pollStream(ctx, s, o, out)
	}
	cons, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{o.subject},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return fmt.Errorf("stream %s: consumer: %w", info.Config.Name, err)
	}
	it, err := cons.Messages()
	if err != nil {
		return fmt.Errorf("stream %s: %w", info.Config.Name, err)
	}
	defer it.Stop()
	for {
		msg, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("stream %s: %w", info.Config.Name, err)
		}
		var seq uint64
		if md, err := msg.Metadata(); err == nil {
			seq = md.Sequence.Stream
		}
		select {
		case out <- tailed{stream: info.Config.Name, subject: msg.Subject(), seq: seq, data: msg.Data()}:
		case <-ctx.Done():
			return nil
		}
	}
}

// pollStream walks s by sequence with "next message on subject" gets and
// polls for new ones.
func pollStream(ctx context.Context, s jetstream.Stream, o *tailOptions, out chan<- tailed) error {
	name := s.CachedInfo().Config.Name
	seq := uint64(1)
	for {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(o.subject))
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, jetstream.ErrMsgNotFound):
			select {
			case <-time.After(o.pollInterval):
				continue
			case <-ctx.Done():
				return nil
			}
		case errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded):
			// Reconnecting or a leader election: try again.
			select {
			case <-time.After(o.pollInterval):
				continue
			case <-ctx.Done():
				return nil
			}
		case err != nil:
			return fmt.Errorf("stream %s: get message %d: %w", name, seq, err)
		}
		seq = m.Sequence + 1
		select {
		case out <- tailed{stream: name, subject: m.Subject, seq: m.Sequence, data: m.Data}:
		case <-ctx.Done():
			return nil
		}
	}
}

// eventLine checks that data is a CloudEvent and returns it as one line of
// compact JSON.
func eventLine(data []byte) ([]byte, error) {
	if _, err := events.Parse(data); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return nil, err
	}
	b.WriteByte('\n')
	return b.Bytes(), nil
}
