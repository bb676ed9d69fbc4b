// Package kvlast reads the latest value of a KV key from the stream leader.
//
// jetstream.KeyValue.Get uses direct gets, which any replica of a clustered
// bucket may answer, possibly before it has applied the newest write. A key
// release decision must see a revocation the moment it is stored, so the
// release path reads through the JetStream message-get API, which only the
// stream leader answers.
package kvlast

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Entry is the latest value of a key.
type Entry struct {
	Value    []byte
	Revision uint64
}

// DefaultTimeout bounds a read when ctx has no deadline.
const DefaultTimeout = 5 * time.Second

// Get returns the latest value of key in bucket, or an error matching
// jetstream.ErrKeyNotFound when the key does not exist or was deleted.
func Get(ctx context.Context, nc *nats.Conn, bucket, key string) (Entry, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	req, err := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{LastFor: "$KV." + bucket + "." + key})
	if err != nil {
		return Entry{}, err
	}
	msg, err := nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET.KV_"+bucket, req)
	if err != nil {
		return Entry{}, fmt.Errorf("kvlast: get %s/%s: %w", bucket, key, err)
	}
	var resp struct {
		Error *struct {
			Code        int    `json:"code"`
			ErrCode     int    `json:"err_code"`
			Description string `json:"description"`
		} `json:"error,omitempty"`
		Message *struct {
			Seq    uint64 `json:"seq"`
			Header []byte `json:"hdrs,omitempty"`
			Data   []byte `json:"data,omitempty"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(msg.Data, &resp); err != nil {
		return Entry{}, fmt.Errorf("kvlast: get %s/%s: unreadable answer: %w", bucket, key, err)
	}
	if resp.Error != nil {
		if resp.Error.ErrCode == int(jetstream.JSErrCodeMessageNotFound) {
			return Entry{}, fmt.Errorf("kvlast: %s/%s: %w", bucket, key, jetstream.ErrKeyNotFound)
		}
		return Entry{}, fmt.Errorf("kvlast: get %s/%s: %s (%d/%d)", bucket, key, resp.Error.Description, resp.Error.Code, resp.Error.ErrCode)
	}
	if resp.Message == nil {
		return Entry{}, fmt.Errorf("kvlast: get %s/%s: %w", bucket, key, jetstream.ErrInvalidJetStreamResponse)
	}
	if len(resp.Message.Header) > 0 {
		hdr, err := nats.DecodeHeadersMsg(resp.Message.Header)
		if err != nil {
			return Entry{}, fmt.Errorf("kvlast: get %s/%s: headers: %w", bucket, key, err)
		}
		// A delete or purge, or the marker the server leaves when a key's
		// TTL (or the bucket's) removed its last value.
		if op := hdr.Get("KV-Operation"); op == "DEL" || op == "PURGE" || hdr.Get("Nats-Marker-Reason") != "" {
			return Entry{}, fmt.Errorf("kvlast: %s/%s: %w", bucket, key, jetstream.ErrKeyNotFound)
		}
	}
	return Entry{Value: resp.Message.Data, Revision: resp.Message.Seq}, nil
}
