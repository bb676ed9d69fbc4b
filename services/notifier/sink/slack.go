package sink

import (
	"fmt"
	"strings"
	"time"
)

// Slack Block Kit limits (api.slack.com/reference/block-kit).
const (
	slackMaxBlocks     = 50
	slackMaxText       = 3000 // a section's text
	slackMaxHeader     = 150  // a header's plain_text
	slackMaxField      = 2000 // one section field
	slackMaxFields     = 10
	slackMaxContextEls = 10
	slackMaxFallback   = 3000 // the top-level text we send
)

// SlackMessage is an incoming-webhook message: a fallback text (shown in
// notifications) and Block Kit blocks.
type SlackMessage struct {
	Text   string       `json:"text"`
	Blocks []SlackBlock `json:"blocks"`
}

// SlackBlock is one Block Kit block (header, section, divider, context).
type SlackBlock struct {
	Type     string      `json:"type"`
	Text     *SlackText  `json:"text,omitempty"`
	Fields   []SlackText `json:"fields,omitempty"`
	Elements []SlackText `json:"elements,omitempty"`
}

// SlackText is a text object: plain_text or mrkdwn.
type SlackText struct {
	Type  string `json:"type"`
	Text  string `json:"text"`
	Emoji bool   `json:"emoji,omitempty"`
}

// newSlack is a Slack incoming webhook: SlackMessageOf posted as JSON.
func newSlack(spec Spec, c *Client) (*jsonPoster[SlackMessage], error) {
	return newJSONPoster(spec, c, ProtocolSlack, SlackMessageOf)
}

// slackEscape escapes the three characters Slack's mrkdwn gives meaning
// to, so text from alerts cannot make links or mentions.
func slackEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

func mrkdwn(s string, max int) SlackText {
	return SlackText{Type: "mrkdwn", Text: truncate(s, max)}
}

// SlackMessageOf returns the message a Slack sink sends for n, within Block
// Kit's limits: at most 50 blocks, 3000 characters a section text.
func SlackMessageOf(n Notification) SlackMessage {
	a := n.Alert
	mark := severityMark(n)
	head := mark + " " + title(n)
	// The fallback text is mrkdwn too (only the header is plain text).
	msg := SlackMessage{Text: truncate(slackEscape(head+": "+a.Message), slackMaxFallback)}
	if len(n.Digest) > 0 {
		msg.Text = truncate(slackEscape(head), slackMaxFallback)
	}
	msg.Blocks = append(msg.Blocks, SlackBlock{
		Type: "header",
		Text: &SlackText{Type: "plain_text", Text: truncate(head, slackMaxHeader), Emoji: true},
	})
	if len(n.Digest) > 0 {
		msg.Blocks = append(msg.Blocks, slackDigest(n)...)
	} else {
		msg.Blocks = append(msg.Blocks, slackAlert(n)...)
	}
	msg.Blocks = append(msg.Blocks, slackContext(n))
	return msg
}

func slackAlert(n Notification) []SlackBlock {
	a := n.Alert
	text := slackEscape(a.Message)
	if n.State == Resolved {
		text = "*Resolved.* " + text
	}
	fields := []SlackText{
		mrkdwn("*VM*\n"+slackEscape(vmLabel(n)), slackMaxField),
	}
	if n.VM != nil && n.VM.ResourceGroup != "" {
		fields = append(fields, mrkdwn("*Resource group*\n"+slackEscape(n.VM.ResourceGroup), slackMaxField))
	}
	fields = append(fields,
		mrkdwn("*Severity*\n"+slackEscape(string(a.Severity)), slackMaxField),
		mrkdwn("*Code*\n`"+slackEscape(a.Code)+"`", slackMaxField),
	)
	if n.VM != nil && n.VM.Subscription != "" {
		fields = append(fields, mrkdwn("*Subscription*\n"+slackEscape(n.VM.Subscription), slackMaxField))
	}
	if n.VM != nil && n.VM.Platform != "" {
		fields = append(fields, mrkdwn("*Platform*\n"+slackEscape(n.VM.Platform), slackMaxField))
	}
	if len(fields) > slackMaxFields {
		fields = fields[:slackMaxFields]
	}
	blocks := []SlackBlock{{Type: "section", Text: ptr(mrkdwn(text, slackMaxText)), Fields: fields}}
	if rs := reasonLines(a.Reasons); len(rs) > 0 {
		var b strings.Builder
		b.WriteString("*Reasons*")
		for _, r := range rs {
			b.WriteString("\n• ")
			b.WriteString(slackEscape(r))
		}
		blocks = append(blocks, SlackBlock{Type: "section", Text: ptr(mrkdwn(b.String(), slackMaxText))})
	}
	return blocks
}

// slackDigest lists a digest's alerts in sections of at most 3000
// characters, leaving room for the header and context blocks; what does
// not fit is counted ("… and 12 more").
func slackDigest(n Notification) []SlackBlock {
	const room = slackMaxBlocks - 2 // header, context
	var (
		blocks []SlackBlock
		cur    strings.Builder
		listed int
	)
	flush := func() {
		if cur.Len() > 0 {
			blocks = append(blocks, SlackBlock{Type: "section", Text: ptr(mrkdwn(cur.String(), slackMaxText))})
			cur.Reset()
		}
	}
	const moreRoom = 40 // "… and N more" in the last section
	for _, a := range n.Digest {
		line := "• " + slackEscape(truncate(digestLine(a), 500))
		if cur.Len() > 0 && cur.Len()+1+len(line) > slackMaxText-moreRoom {
			if len(blocks) == room-1 {
				break // the last section is full
			}
			flush()
		}
		if cur.Len() > 0 {
			cur.WriteByte('\n')
		}
		cur.WriteString(line)
		listed++
	}
	if rest := len(n.Digest) - listed; rest > 0 {
		fmt.Fprintf(&cur, "\n… and %d more", rest)
	}
	flush()
	return blocks
}

func slackContext(n Notification) SlackBlock {
	var els []SlackText
	t := n.Time
	if t.IsZero() {
		t = n.Alert.At
	}
	parts := []string{"Vigil"}
	if n.Alert.VMKey != "" && len(n.Digest) == 0 {
		parts = append(parts, "VM key `"+slackEscape(n.Alert.VMKey)+"`")
	}
	if !t.IsZero() {
		parts = append(parts, t.UTC().Format(time.RFC3339))
	}
	els = append(els, mrkdwn(strings.Join(parts, " · "), slackMaxText))
	if u := n.ConsoleURL; u != "" && safeLink(u) {
		els = append(els, mrkdwn("<"+u+"|Open in Vigil>", slackMaxText))
	}
	return SlackBlock{Type: "context", Elements: els}
}

// safeLink reports whether u can go into a link: http(s) and none of the
// characters that would break Slack's <url|text> or Markdown links.
func safeLink(u string) bool {
	if !strings.HasPrefix(u, "https://") && !strings.HasPrefix(u, "http://") {
		return false
	}
	return !strings.ContainsAny(u, "<>| \t\r\n()[]\"")
}

func ptr[T any](v T) *T { return &v }
