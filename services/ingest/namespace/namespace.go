// Package namespace pulls events from an Event Grid namespace topic
// subscription (aznamespaces): it receives a batch, stores it, and only then
// acknowledges it; it releases a batch with a delay when storage fails
// (the events come back later), rejects events that cannot be parsed (they
// go to the subscription's dead-letter destination), and renews the locks
// of a batch whose storage is slow.
package namespace

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/messaging/eventgrid/aznamespaces"

	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

// Config says where to pull from.
type Config struct {
	// Endpoint is the namespace's endpoint, e.g.
	// https://<namespace>.<region>-1.eventgrid.azure.net.
	Endpoint string
	// Topic and Subscription name the namespace topic and its event
	// subscription (queue delivery).
	Topic, Subscription string
	// Credential (Entra ID) or Key (an access key of the namespace)
	// authenticates; exactly one is needed.
	Credential azcore.TokenCredential
	Key        string
	// ClientOptions are passed to the SDK client (transport, retries).
	ClientOptions *aznamespaces.ReceiverClientOptions
	// MaxEvents per receive (1..100, default 100) and MaxWait, how long a
	// receive waits for events (10..120 s, default 60 s).
	MaxEvents int32
	MaxWait   time.Duration
	// RenewInterval is how often the locks of a batch being stored are
	// renewed (default 20 s, a third of the default 60 s lock duration).
	RenewInterval time.Duration
	// ReleaseDelay is how long a released batch stays invisible (one of
	// 0, 10, 60, 600, 3600 seconds; default 10 s).
	ReleaseDelay aznamespaces.ReleaseDelay
	// Limits bound each event.
	Limits eventgrid.Limits
	// Store stores events durably; nil error means every one is stored.
	Store eventgrid.StoreFunc
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Observe, when set, is told about every operation: op is "receive",
	// "acknowledge", "release", "reject" or "renew"; n the number of events.
	Observe func(op string, n int, err error)
}

// Puller pulls from one namespace subscription.
type Puller struct {
	cfg    Config
	client *aznamespaces.ReceiverClient
	log    *slog.Logger
}

// New builds a Puller.
func New(cfg Config) (*Puller, error) {
	switch {
	case cfg.Endpoint == "" || cfg.Topic == "" || cfg.Subscription == "":
		return nil, errors.New("namespace: endpoint, topic and subscription are required")
	case cfg.Store == nil:
		return nil, errors.New("namespace: a Store is required")
	case (cfg.Credential == nil) == (cfg.Key == ""):
		return nil, errors.New("namespace: exactly one of a credential or an access key is required")
	}
	if cfg.MaxEvents <= 0 || cfg.MaxEvents > 100 {
		cfg.MaxEvents = 100
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 60 * time.Second
	}
	cfg.MaxWait = min(max(cfg.MaxWait, 10*time.Second), 120*time.Second)
	if cfg.RenewInterval <= 0 {
		cfg.RenewInterval = 20 * time.Second
	}
	if cfg.ReleaseDelay == "" {
		cfg.ReleaseDelay = aznamespaces.ReleaseDelayTenSeconds
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var opts aznamespaces.ReceiverClientOptions
	if cfg.ClientOptions != nil {
		opts = *cfg.ClientOptions
	}
	opts.PerCallPolicies = append(append([]policy.Policy(nil), opts.PerCallPolicies...), capturePolicy{})
	var client *aznamespaces.ReceiverClient
	var err error
	if cfg.Credential != nil {
		client, err = aznamespaces.NewReceiverClient(cfg.Endpoint, cfg.Topic, cfg.Subscription, cfg.Credential, &opts)
	} else {
		client, err = aznamespaces.NewReceiverClientWithSharedKeyCredential(cfg.Endpoint, cfg.Topic, cfg.Subscription, azcore.NewKeyCredential(cfg.Key), &opts)
	}
	if err != nil {
		return nil, fmt.Errorf("namespace: client: %w", err)
	}
	return &Puller{cfg: cfg, client: client, log: cfg.Logger.With("component", "namespace", "topic", cfg.Topic, "subscription", cfg.Subscription)}, nil
}

// Run pulls until ctx ends. Failed receives are retried with backoff.
func (p *Puller) Run(ctx context.Context) error {
	failures := 0
	for ctx.Err() == nil {
		_, err := p.Once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			d := min(time.Second<<min(failures-1, 6), time.Minute)
			p.log.WarnContext(ctx, "namespace pull failed; retrying", "retry_in", d, "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(d):
			}
			continue
		}
		failures = 0
	}
	return nil
}

// Once receives one batch and settles every event of it: acknowledged when
// stored, released (with delay) when storage failed, rejected when
// malformed. It returns the number of events received.
func (p *Puller) Once(ctx context.Context) (int, error) {
	sink := &captured{events: map[string]json.RawMessage{}}
	rctx := context.WithValue(ctx, sinkKey{}, sink)
	resp, err := p.client.ReceiveEvents(rctx, &aznamespaces.ReceiveEventsOptions{
		MaxEvents:   to.Ptr(p.cfg.MaxEvents),
		MaxWaitTime: to.Ptr(int32(p.cfg.MaxWait / time.Second)),
	})
	p.observe("receive", len(resp.Details), err)
	if err != nil {
		return 0, fmt.Errorf("namespace: receive: %w", err)
	}
	if len(resp.Details) == 0 {
		return 0, nil
	}
	var (
		evs      []eventgrid.Event
		tokens   []string // of evs
		rejected []string
	)
	for _, d := range resp.Details {
		if d.BrokerProperties == nil || d.BrokerProperties.LockToken == nil {
			continue // nothing can be settled without a lock token
		}
		tok := *d.BrokerProperties.LockToken
		raw, ok := sink.get(tok)
		if !ok {
			rejected = append(rejected, tok)
			continue
		}
		ev, err := eventgrid.ParseEvent(raw, p.cfg.Limits)
		if err == nil && ev.Schema != eventgrid.SchemaCloudEvents {
			err = fmt.Errorf("%w: namespace events must be CloudEvents", eventgrid.ErrMalformed)
		}
		if err != nil {
			p.log.WarnContext(ctx, "rejecting malformed namespace event", "lock_token", tok, "err", err)
			rejected = append(rejected, tok)
			continue
		}
		evs = append(evs, ev)
		tokens = append(tokens, tok)
	}
	var errs []error
	if len(rejected) > 0 {
		_, err := p.client.RejectEvents(ctx, rejected, nil)
		p.observe("reject", len(rejected), err)
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace: reject: %w", err))
		}
	}
	if len(evs) == 0 {
		return len(resp.Details), errors.Join(errs...)
	}
	serr := p.storeRenewing(ctx, evs, tokens)
	switch {
	case serr == nil:
		res, err := p.client.AcknowledgeEvents(ctx, tokens, nil)
		p.observe("acknowledge", len(tokens), err)
		if err != nil {
			// The events are stored; unacknowledged, they are redelivered
			// after the lock expires and stored once (deduplicated).
			errs = append(errs, fmt.Errorf("namespace: acknowledge: %w", err))
		} else if len(res.FailedLockTokens) > 0 {
			p.log.WarnContext(ctx, "some acknowledgements failed; those events will be redelivered and deduplicated", "failed", len(res.FailedLockTokens))
		}
	case errors.Is(serr, eventgrid.ErrTooLarge):
		_, err := p.client.RejectEvents(ctx, tokens, nil)
		p.observe("reject", len(tokens), err)
		errs = append(errs, serr)
	default:
		p.log.WarnContext(ctx, "storing namespace events failed; releasing them for redelivery", "events", len(evs), "delay_s", string(p.cfg.ReleaseDelay), "err", serr)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		_, err := p.client.ReleaseEvents(rctx, tokens, &aznamespaces.ReleaseEventsOptions{ReleaseDelayInSeconds: to.Ptr(p.cfg.ReleaseDelay)})
		cancel()
		p.observe("release", len(tokens), err)
		errs = append(errs, fmt.Errorf("namespace: store: %w", serr))
		if err != nil {
			errs = append(errs, fmt.Errorf("namespace: release: %w", err))
		}
	}
	return len(resp.Details), errors.Join(errs...)
}

// storeRenewing stores evs, renewing their locks while it takes long.
func (p *Puller) storeRenewing(ctx context.Context, evs []eventgrid.Event, tokens []string) error {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(p.cfg.RenewInterval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				rctx, cancel := context.WithTimeout(ctx, p.cfg.RenewInterval)
				res, err := p.client.RenewEventLocks(rctx, tokens, nil)
				cancel()
				p.observe("renew", len(tokens), err)
				if err != nil {
					p.log.WarnContext(ctx, "renewing locks failed", "err", err)
				} else if len(res.FailedLockTokens) > 0 {
					p.log.WarnContext(ctx, "some locks could not be renewed", "failed", len(res.FailedLockTokens))
				}
			}
		}
	}()
	err := p.cfg.Store(ctx, evs)
	close(done)
	wg.Wait()
	return err
}

func (p *Puller) observe(op string, n int, err error) {
	if p.cfg.Observe != nil {
		p.cfg.Observe(op, n, err)
	}
}

// captured holds the events of one receive exactly as the service sent
// them, by lock token: the SDK decodes events into messaging.CloudEvent,
// which cannot give back the original bytes.
type captured struct {
	mu     sync.Mutex
	events map[string]json.RawMessage
}

func (c *captured) get(tok string) (json.RawMessage, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	raw, ok := c.events[tok]
	return raw, ok
}

type sinkKey struct{}

// maxReceiveBody bounds a receive response (100 events of up to 1 MB).
const maxReceiveBody = 110 << 20

// capturePolicy records the raw events of a receive response and replaces
// any event the SDK could not decode (which would fail the whole batch)
// with a placeholder, so that the batch is received and the bad event
// rejected by its lock token.
type capturePolicy struct{}

func (capturePolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if err != nil || resp.StatusCode != http.StatusOK || !strings.HasSuffix(req.Raw().URL.Path, ":receive") {
		return resp, err
	}
	sink, _ := req.Raw().Context().Value(sinkKey{}).(*captured)
	if sink == nil {
		return resp, nil
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxReceiveBody+1))
	_ = resp.Body.Close()
	if err != nil {
		return nil, fmt.Errorf("namespace: read receive response: %w", err)
	}
	if len(body) > maxReceiveBody {
		return nil, fmt.Errorf("namespace: receive response exceeds %d bytes", maxReceiveBody)
	}
	var doc struct {
		Value []struct {
			BrokerProperties json.RawMessage `json:"brokerProperties"`
			Event            json.RawMessage `json:"event"`
		} `json:"value"`
	}
	if err := json.Unmarshal(body, &doc); err == nil {
		out := make([]map[string]json.RawMessage, 0, len(doc.Value))
		for _, v := range doc.Value {
			var bp struct {
				LockToken string `json:"lockToken"`
			}
			_ = json.Unmarshal(v.BrokerProperties, &bp)
			ev := v.Event
			if bp.LockToken != "" {
				sink.mu.Lock()
				sink.events[bp.LockToken] = bytes.Clone(v.Event)
				sink.mu.Unlock()
			}
			if !sdkDecodable(ev) {
				ev = placeholder
			}
			out = append(out, map[string]json.RawMessage{"brokerProperties": v.BrokerProperties, "event": ev})
		}
		if b, err := json.Marshal(map[string]any{"value": out}); err == nil {
			body = b
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	resp.ContentLength = int64(len(body))
	return resp, nil
}

// placeholder stands in for an event the SDK would refuse.
var placeholder = json.RawMessage(`{"specversion":"1.0","id":"vigil-undecodable","source":"vigil-ingest","type":"io.vigil.ingest.undecodable"}`)

// sdkDecodable reports whether messaging.CloudEvent would decode ev: an
// object whose required attributes are non-empty strings, and whose known
// optional attributes have the right JSON types.
func sdkDecodable(ev json.RawMessage) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(ev, &m) != nil {
		return false
	}
	for _, k := range []string{"id", "source", "specversion", "type"} {
		var s string
		if json.Unmarshal(m[k], &s) != nil || s == "" {
			return false
		}
	}
	for _, k := range []string{"datacontenttype", "dataschema", "subject"} {
		if v, ok := m[k]; ok {
			var s *string
			if json.Unmarshal(v, &s) != nil {
				return false
			}
		}
	}
	if v, ok := m["time"]; ok {
		var s string
		if json.Unmarshal(v, &s) != nil {
			return false
		}
		if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
			return false
		}
	}
	if v, ok := m["data_base64"]; ok {
		var s string
		if json.Unmarshal(v, &s) != nil {
			return false
		}
		if _, err := base64.StdEncoding.DecodeString(s); err != nil {
			return false
		}
	}
	return true
}
