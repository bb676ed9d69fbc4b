package bus

import "time"

// ConsumeOption configures Consume and ConsumeBatch. Each option says which
// of the two it applies to; the other ignores it.
type ConsumeOption func(*consumeOptions)

type consumeOptions struct {
	alertSource string
	retryCreate bool
	recreate    bool
	// Consume
	concurrency int
	backoff     []time.Duration
	inProgress  time.Duration
	ackNoWait   bool
	key         func(*Message) string
	// ConsumeBatch
	batchSize     int
	batchWait     time.Duration
	bufferedBytes int
	inflight      int
}

func newConsumeOptions(c *Conn, opts []ConsumeOption) consumeOptions {
	o := consumeOptions{
		alertSource:   c.cfg.Name,
		concurrency:   16,
		backoff:       []time.Duration{250 * time.Millisecond, time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second},
		batchSize:     1000,
		batchWait:     100 * time.Millisecond,
		bufferedBytes: 64 << 20,
		inflight:      2,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.alertSource == "" {
		o.alertSource = "vigil"
	}
	return o
}

// WithRetryCreate makes Consume and ConsumeBatch retry creating the
// consumer, waiting a little longer after each failure (at most 5 s),
// until it succeeds or ctx ends, instead of returning the error: for a
// service that keeps its other work going while NATS is unreachable.
func WithRetryCreate() ConsumeOption {
	return func(o *consumeOptions) { o.retryCreate = true }
}

// WithRecreate makes Consume and ConsumeBatch delete the durable consumer
// before creating it, so that the config's start (DeliverPolicy,
// OptStartSeq), which an update cannot change, takes effect.
func WithRecreate() ConsumeOption {
	return func(o *consumeOptions) { o.recreate = true }
}

// WithAlertSource names the service in Consume's poison-message alerts.
func WithAlertSource(name string) ConsumeOption {
	return func(o *consumeOptions) { o.alertSource = name }
}

// WithConcurrency bounds the number of messages Consume handles at once
// (default 16). It is also the number of messages buffered from the server.
func WithConcurrency(n int) ConsumeOption {
	return func(o *consumeOptions) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// WithOrderingKey makes Consume handle the messages of one key one at a
// time, in delivery order, and those of different keys in parallel: each
// key belongs to one of the WithConcurrency handlers (its shard, chosen by
// a hash of the key), where up to 16 messages queue behind the one in
// hand. key runs on the pull loop, in delivery order, for each message
// whose envelope could be read; it may set m.Value to pass what it decoded
// to find the key on to the handler. The order holds among deliveries: a
// message whose handler failed is redelivered after the ones of its key
// that followed it.
func WithOrderingKey(key func(m *Message) string) ConsumeOption {
	return func(o *consumeOptions) { o.key = key }
}

// WithBackoff sets Consume's redelivery delays after a handler error: the
// n-th failed delivery waits ds[n-1], the last value repeating. The default
// is 250 ms, 1 s, 5 s, 15 s, 30 s.
func WithBackoff(ds ...time.Duration) ConsumeOption {
	return func(o *consumeOptions) {
		if len(ds) > 0 {
			o.backoff = ds
		}
	}
}

// WithInProgress sets how often Consume marks a message it holds (queued
// for or in a handler) in progress so that the server does not redeliver
// it (default a third of the consumer's AckWait).
func WithInProgress(interval time.Duration) ConsumeOption {
	return func(o *consumeOptions) { o.inProgress = interval }
}

// WithAckNoWait makes Consume send a handler's acknowledgement without
// waiting for the server to confirm it (the default waits). The ack still
// goes out only after the handler returned nil, that is after its durable
// work; what is given up is learning that the ack was lost (a connection
// dropped at that moment), which leads to a redelivery after AckWait. Use
// it for handlers that treat a redelivery of a completed message as cheap
// and harmless: it saves the confirmation's round trip on every message.
func WithAckNoWait() ConsumeOption {
	return func(o *consumeOptions) { o.ackNoWait = true }
}

// WithBatch sets ConsumeBatch's batches: at most size messages (default
// 1000), and how long a partial batch waits for messages the stream still
// holds for the consumer before it is written anyway (default 100 ms).
func WithBatch(size int, maxWait time.Duration) ConsumeOption {
	return func(o *consumeOptions) {
		if size > 0 {
			o.batchSize = size
		}
		if maxWait > 0 {
			o.batchWait = maxWait
		}
	}
}

// WithBufferedBytes bounds the bytes ConsumeBatch pulls ahead of the
// batches (default 64 MiB; at most twice the batch size in messages).
func WithBufferedBytes(n int) ConsumeOption {
	return func(o *consumeOptions) {
		if n > 0 {
			o.bufferedBytes = n
		}
	}
}

// WithInflightBatches sets how many of ConsumeBatch's batches may be
// flushed before the oldest is durable (default 2: one being written, the
// next queued behind it).
func WithInflightBatches(n int) ConsumeOption {
	return func(o *consumeOptions) {
		if n > 0 {
			o.inflight = n
		}
	}
}
