package sink

import (
	"context"
	"fmt"
)

type alertmanager struct {
	c   *Client
	url string
}

func newAlertmanager(spec Spec, c *Client) (*alertmanager, error) {
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, false, false); err != nil {
		return nil, err
	}
	return &alertmanager{c: c, url: spec.URL}, nil
}

func (s *alertmanager) Protocol() string { return ProtocolAlertmanager }

func (s *alertmanager) Deliver(ctx context.Context, n Notification) error {
	return &Error{Kind: Reject, Err: fmt.Errorf("alertmanager: not implemented yet")}
}
