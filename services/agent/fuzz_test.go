package agent_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/sim"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
	"github.com/vigil-cc/vigil/services/agent"
)

// FuzzAnswer feeds arbitrary challenge requests to an agent: it answers
// with a bundle for its own VM and a valid nonce, refuses everything else
// with a reply error, and never panics.
func FuzzAnswer(f *testing.F) {
	vm, err := authority().NewVM(sim.VMConfig{AK: sim.AKECDSAP256})
	if err != nil {
		f.Fatal(err)
	}
	a := agent.New(vm.VMKey(), vmSource{vm}, time.Second, 1e9, 1e6, slog.New(slog.DiscardHandler), nil)
	good, _ := json.Marshal(events.Challenge{VMKey: vm.VMKey(), Nonce: evidence.NewNonce()})
	f.Add(good)
	f.Add([]byte(`{"vm_key":"` + vm.VMKey() + `","nonce":"AAAA"}`))
	f.Add([]byte(`{"vm_key":"` + vm.VMKey() + `","nonce":null,"deadline":"2001-01-01T00:00:00Z"}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		out, err := a.Answer(context.Background(), data)
		var re *bus.ReplyError
		switch {
		case err != nil && !errors.As(err, &re):
			t.Fatalf("error that is no refusal: %v", err)
		case err != nil && out != nil:
			t.Fatal("refusal with an answer")
		case err == nil:
			var ch events.Challenge
			if json.Unmarshal(data, &ch) != nil || ch.VMKey != vm.VMKey() || len(ch.Nonce) < 8 || len(ch.Nonce) > evidence.MaxNonceSize {
				t.Fatalf("answered %q", data)
			}
			b, err := evidence.ParseBundle(out)
			if err != nil {
				t.Fatalf("answer is no bundle: %v", err)
			}
			// The quote covers the challenge's labelled digest, never the
			// caller's bytes as they are.
			q, err := tpmquote.Parse(b.TPMQuote.Attest, b.TPMQuote.Signature)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(q.ExtraData, evidence.ChallengeBinding(ch.Nonce)) {
				t.Fatalf("quote extraData %x, want the challenge binding of nonce %x", q.ExtraData, ch.Nonce)
			}
		}
	})
}
