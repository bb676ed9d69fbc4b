package bus

import (
	"errors"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// IsRevisionConflict reports whether err is a compare-and-set write's
// refusal: a KV Create of a key that exists, an Update or Delete whose
// expected revision is not the key's last, or a publish with an expected
// last sequence that is not. The writer read something older: it reads
// again and decides again.
func IsRevisionConflict(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return true
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
	}
	// A purge's refusal reaches the client as text only.
	return strings.Contains(err.Error(), "wrong last sequence")
}

// IsKeyMissing reports whether err says a KV key does not exist: never
// written, or its last entry a delete or purge marker.
func IsKeyMissing(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted)
}
