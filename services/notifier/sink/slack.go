package sink

import (
	"context"
	"fmt"
)

type slack struct {
	c   *Client
	url string
}

func newSlack(spec Spec, c *Client) (*slack, error) {
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, false, false); err != nil {
		return nil, err
	}
	return &slack{c: c, url: spec.URL}, nil
}

func (s *slack) Protocol() string { return ProtocolSlack }

func (s *slack) Deliver(ctx context.Context, n Notification) error {
	return &Error{Kind: Reject, Err: fmt.Errorf("slack: not implemented yet")}
}
