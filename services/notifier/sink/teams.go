package sink

import (
	"context"
	"fmt"
)

type teams struct {
	c   *Client
	url string
}

func newTeams(spec Spec, c *Client) (*teams, error) {
	if err := checkSettings(spec, nil); err != nil {
		return nil, err
	}
	if err := checkSecrets(spec, false, false, false); err != nil {
		return nil, err
	}
	return &teams{c: c, url: spec.URL}, nil
}

func (s *teams) Protocol() string { return ProtocolTeams }

func (s *teams) Deliver(ctx context.Context, n Notification) error {
	return &Error{Kind: Reject, Err: fmt.Errorf("teams: not implemented yet")}
}
