package sink

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// New validates spec and returns its sink, sending through c. Errors wrap
// ErrInvalidSpec (or ErrRefused for a destination c may not reach) and
// never show the URL's path or a secret.
func New(spec Spec, c *Client) (Sink, error) {
	if c == nil {
		return nil, fmt.Errorf("%w: no client", ErrInvalidSpec)
	}
	if spec.Protocol == ProtocolPagerDuty && spec.URL == "" {
		spec.URL = PagerDutyEventsURL
	}
	if spec.URL == "" {
		return nil, fmt.Errorf("%w: %s: no URL", ErrInvalidSpec, spec.Protocol)
	}
	if _, err := c.CheckURL(spec.URL); err != nil {
		return nil, fmt.Errorf("%s: %w", spec.Protocol, err)
	}
	var (
		s   Sink
		err error
	)
	switch spec.Protocol {
	case ProtocolWebhook:
		s, err = newWebhook(spec, c)
	case ProtocolSlack:
		s, err = newSlack(spec, c)
	case ProtocolTeams:
		s, err = newTeams(spec, c)
	case ProtocolPagerDuty:
		s, err = newPagerDuty(spec, c)
	case ProtocolAlertmanager:
		s, err = newAlertmanager(spec, c)
	default:
		return nil, fmt.Errorf("%w: unknown protocol %q (want one of %s)", ErrInvalidSpec, spec.Protocol, strings.Join(Protocols(), ", "))
	}
	if err != nil {
		if !errors.Is(err, ErrInvalidSpec) {
			err = fmt.Errorf("%w: %w", ErrInvalidSpec, err)
		}
		return nil, fmt.Errorf("%s: %w", spec.Protocol, err)
	}
	return s, nil
}

// checkSettings refuses settings not in known.
func checkSettings(spec Spec, known []string) error {
	for _, k := range slices.Sorted(maps.Keys(spec.Settings)) {
		if !slices.Contains(known, k) {
			if len(known) == 0 {
				return fmt.Errorf("%w: unknown setting %q (%s takes none)", ErrInvalidSpec, k, spec.Protocol)
			}
			return fmt.Errorf("%w: unknown setting %q (%s takes %s)", ErrInvalidSpec, k, spec.Protocol, strings.Join(known, ", "))
		}
	}
	return nil
}

// checkSecrets refuses secrets a protocol does not use, so that a
// misplaced credential is noticed rather than ignored.
func checkSecrets(spec Spec, webhook, bearer, routing bool) error {
	s := spec.Secrets
	switch {
	case len(s.WebhookSecrets) > 0 && !webhook:
		return fmt.Errorf("%w: %s takes no webhook secret", ErrInvalidSpec, spec.Protocol)
	case s.BearerToken != "" && !bearer:
		return fmt.Errorf("%w: %s takes no bearer token", ErrInvalidSpec, spec.Protocol)
	case s.RoutingKey != "" && !routing:
		return fmt.Errorf("%w: %s takes no routing key", ErrInvalidSpec, spec.Protocol)
	}
	return nil
}

// checkNotification refuses a notification a sink cannot deliver.
func checkNotification(n Notification) error {
	switch {
	case n.ID == "":
		return &Error{Kind: Reject, Err: errors.New("sink: notification without ID")}
	case n.State != Firing && n.State != Resolved:
		return &Error{Kind: Reject, Err: fmt.Errorf("sink: notification state %q (want firing or resolved)", n.State)}
	}
	return nil
}
