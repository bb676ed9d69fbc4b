package bus

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// WaitJetStream waits until the JetStream API answers: on a cluster that
// has just formed, until it has elected its meta leader (before that a
// request gets no answer at all). It asks every `each` (default 2 s), each
// time with that deadline, until ctx ends; then it returns the last
// error.
func WaitJetStream(ctx context.Context, js jetstream.JetStream, each time.Duration) error {
	if each <= 0 {
		each = 2 * time.Second
	}
	for {
		actx, cancel := context.WithTimeout(ctx, each)
		_, err := js.AccountInfo(actx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("jetstream does not answer: %w", err)
		case <-time.After(each / 4):
		}
	}
}
