package sink

import (
	"fmt"
	"strings"
	"time"
)

// Teams limits: a Workflows message is at most about 28 KB; a digest lists
// at most teamsMaxDigest alerts.
const (
	teamsMaxDigest = 50
	teamsMaxText   = 2000
)

// TeamsMessage is what a Microsoft Teams Workflows webhook ("When a Teams
// webhook request is received") takes: a message with one Adaptive Card.
type TeamsMessage struct {
	Type        string            `json:"type"` // "message"
	Attachments []TeamsAttachment `json:"attachments"`
}

// TeamsAttachment holds the card.
type TeamsAttachment struct {
	ContentType string       `json:"contentType"` // application/vnd.microsoft.card.adaptive
	ContentURL  *string      `json:"contentUrl"`  // null
	Content     AdaptiveCard `json:"content"`
}

// AdaptiveCard is an Adaptive Card 1.4.
type AdaptiveCard struct {
	Schema  string           `json:"$schema"`
	Type    string           `json:"type"` // "AdaptiveCard"
	Version string           `json:"version"`
	Body    []map[string]any `json:"body"`
	Actions []map[string]any `json:"actions,omitempty"`
	MSTeams map[string]any   `json:"msteams,omitempty"`
}

// Adaptive Card constants.
const (
	ContentTypeAdaptiveCard = "application/vnd.microsoft.card.adaptive"
	AdaptiveCardSchema      = "http://adaptivecards.io/schemas/adaptive-card.json"
	AdaptiveCardVersion     = "1.4"
)

// newTeams is a Teams Workflows webhook: TeamsMessageOf posted as JSON.
func newTeams(spec Spec, c *Client) (*jsonPoster[TeamsMessage], error) {
	return newJSONPoster(spec, c, ProtocolTeams, TeamsMessageOf)
}

// teamsEscape escapes the brackets of Markdown links, so text from alerts
// cannot make a link with a misleading title in a card (other Markdown,
// emphasis or lists, can only change how the text looks and is left as is:
// escaping it would show backslashes in messages).
func teamsEscape(s string) string {
	return strings.NewReplacer("[", `\[`, "]", `\]`).Replace(s)
}

func textBlock(text string, opts map[string]any) map[string]any {
	b := map[string]any{"type": "TextBlock", "text": text, "wrap": true}
	for k, v := range opts {
		b[k] = v
	}
	return b
}

func fact(title, value string) map[string]any {
	return map[string]any{"title": title, "value": teamsEscape(truncate(value, teamsMaxText))}
}

// TeamsMessageOf returns the message a Teams sink sends for n.
func TeamsMessageOf(n Notification) TeamsMessage {
	a := n.Alert
	color := "Attention"
	switch {
	case n.State == Resolved:
		color = "Good"
	case a.Severity == "warning" || a.Severity == "high":
		color = "Warning"
	case a.Severity == "info":
		color = "Accent"
	}
	body := []map[string]any{
		textBlock(teamsEscape(severityMark(n)+" "+title(n)), map[string]any{"size": "Large", "weight": "Bolder", "color": color, "style": "heading"}),
	}
	if len(n.Digest) > 0 {
		facts := make([]map[string]any, 0, min(len(n.Digest), teamsMaxDigest)+1)
		for i, d := range n.Digest {
			if i == teamsMaxDigest {
				facts = append(facts, fact("…", fmt.Sprintf("and %d more", len(n.Digest)-i)))
				break
			}
			vm := d.VMKey
			if vm == "" {
				vm = "fleet"
			}
			facts = append(facts, fact(teamsEscape(vm), fmt.Sprintf("[%s] %s: %s", d.Severity, d.Code, d.Message)))
		}
		body = append(body, map[string]any{"type": "FactSet", "facts": facts})
	} else {
		msg := teamsEscape(truncate(a.Message, teamsMaxText))
		if n.State == Resolved {
			msg = "**Resolved.** " + msg
		}
		body = append(body, textBlock(msg, nil))
		facts := []map[string]any{fact("VM", vmLabel(n))}
		if n.VM != nil && n.VM.ResourceGroup != "" {
			facts = append(facts, fact("Resource group", n.VM.ResourceGroup))
		}
		if n.VM != nil && n.VM.Subscription != "" {
			facts = append(facts, fact("Subscription", n.VM.Subscription))
		}
		facts = append(facts, fact("Severity", string(a.Severity)), fact("Code", a.Code))
		if a.VMKey != "" {
			facts = append(facts, fact("VM key", a.VMKey))
		}
		if rs := reasonLines(a.Reasons); len(rs) > 0 {
			facts = append(facts, fact("Reasons", strings.Join(rs, "; ")))
		}
		body = append(body, map[string]any{"type": "FactSet", "facts": facts})
	}
	t := n.Time
	if t.IsZero() {
		t = a.At
	}
	if !t.IsZero() {
		body = append(body, textBlock("Vigil · "+t.UTC().Format(time.RFC3339), map[string]any{"isSubtle": true, "size": "Small"}))
	}
	card := AdaptiveCard{
		Schema:  AdaptiveCardSchema,
		Type:    "AdaptiveCard",
		Version: AdaptiveCardVersion,
		Body:    body,
		MSTeams: map[string]any{"width": "Full"},
	}
	if u := n.ConsoleURL; u != "" && safeLink(u) {
		card.Actions = []map[string]any{{"type": "Action.OpenUrl", "title": "Open in Vigil", "url": u}}
	}
	return TeamsMessage{
		Type:        "message",
		Attachments: []TeamsAttachment{{ContentType: ContentTypeAdaptiveCard, Content: card}},
	}
}
