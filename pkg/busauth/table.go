package busauth

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// PermissionsMarkdown renders every principal's permissions as Markdown:
// a table of what each may do, by purpose, and what each purpose allows
// in JetStream API subjects. It is what docs/security.md shows and `vigil
// auth show` prints; Permissions lists the subjects themselves.
func PermissionsMarkdown() string {
	var b strings.Builder
	b.WriteString("| principal | inbox prefix | publishes | subscribes | durable consumers | reads streams | buckets | denied |\n")
	b.WriteString("|---|---|---|---|---|---|---|---|\n")
	for _, p := range all() {
		bl := build(p)
		a, f := bl.done(), bl.f
		sub := codes(f.subscribe)
		if a.Responses {
			sub += fmt.Sprintf("; answers what it receives (`allow_responses`: one reply each, within %d s)", ResponseTTL/time.Second)
		}
		var durables []string
		for _, c := range f.durables {
			d := "`" + c.Durable + "` on " + c.Stream
			if len(c.Filters) > 0 {
				d += " (" + strings.Join(c.Filters, ", ") + ")"
			}
			durables = append(durables, d)
		}
		var reads []string
		if len(f.provision) > 0 {
			reads = append(reads, "creates and updates "+list(f.provision))
		}
		if len(f.info) > 0 {
			reads = append(reads, "info of "+short(f.info, f.provision))
		}
		if len(f.msgGet) > 0 {
			reads = append(reads, "messages of "+short(f.msgGet, f.provision))
		}
		if len(f.ordered) > 0 {
			reads = append(reads, "ordered consumers on "+short(f.ordered, f.provision))
		}
		if len(f.api) > 0 {
			reads = append(reads, codes(f.api))
		}
		var kv []string
		if len(f.kvWrite) > 0 {
			kv = append(kv, "writes "+list(f.kvWrite))
		}
		if len(f.kvRead) > 0 {
			kv = append(kv, "reads "+list(f.kvRead))
		}
		if len(f.watch) > 0 {
			kv = append(kv, "watches "+list(f.watch))
		}
		denied := "none"
		if len(f.denied) > 0 {
			denied = "the other principals' durables " + list(f.denied)
		}
		fmt.Fprintf(&b, "| %s | `%s` | %s | %s | %s | %s | %s | %s |\n", p, a.InboxPrefix, codes(f.publish), sub,
			orNone(strings.Join(durables, "; ")), orNone(strings.Join(reads, "; ")), orNone(strings.Join(kv, "; ")), denied)
	}
	b.WriteString(`
Every principal but the agent may also ask for ` + "`$JS.API.INFO`" + `. In JetStream API subjects:
a durable consumer *D* on stream *S* is ` + "`$JS.API.CONSUMER.CREATE.S.D[.filter]`" + ` (with its one filter
when it has one), ` + "`$JS.API.CONSUMER.{INFO,DELETE,MSG.NEXT}.S.D`" + ` and ` + "`$JS.ACK.S.D.>`" + `; an ordered
consumer on *S* is ` + "`$JS.API.CONSUMER.CREATE.S.*[.filter]`" + ` and ` + "`$JS.API.CONSUMER.{INFO,DELETE,MSG.NEXT}.S.*`" + `,
the other principals' durables on *S* denied by name; info is ` + "`$JS.API.STREAM.INFO.S`" + `, messages
` + "`$JS.API.STREAM.MSG.GET.S`" + `, creating and updating ` + "`$JS.API.STREAM.{CREATE,UPDATE}.S`" + `; reading bucket *B*
is ` + "`$JS.API.STREAM.{INFO,MSG.GET}.KV_B`" + ` and ` + "`$JS.API.DIRECT.GET.KV_B[.>]`" + `, writing adds ` + "`$KV.B.>`" + `,
watching (and listing keys) is ` + "`$JS.API.CONSUMER.CREATE.KV_B[.*[.>]]`" + `, ` + "`$JS.API.CONSUMER.DELETE.KV_B.*`" + `
and ` + "`$JS.FC.KV_B.>`" + `. ` + "`{{name()}}`" + ` is the user's name: an agent's VM key, an administrator's name.
`)
	return b.String()
}

func codes(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	parts := make([]string, len(s))
	for i, v := range s {
		parts[i] = "`" + v + "`"
	}
	return strings.Join(parts, ", ")
}

// list joins names, or says "every stream and bucket" or "every bucket"
// for those.
func list(s []string) string {
	switch {
	case slices.Equal(s, streamNames()):
		return "every stream and bucket (" + strings.Join(s, ", ") + ")"
	case slices.Equal(s, bucketNames()):
		return "every bucket"
	}
	return strings.Join(s, ", ")
}

// short is list(s), or "the same" when s is what came before.
func short(s, before []string) string {
	if len(before) > 0 && slices.Equal(s, before) {
		return "the same"
	}
	return list(s)
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
