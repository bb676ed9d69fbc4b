// Package notifier delivers Vigil's alerts to the sinks security teams
// already use (webhooks, Slack, Teams, PagerDuty, Alertmanager), durably,
// with firing and resolved notifications (issue 16; being built).
package notifier
