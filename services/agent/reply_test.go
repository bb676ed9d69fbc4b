package agent

import (
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
)

// TestChallengerReply: in operator mode the agent answers challenges only
// under the attest-worker's inbox, the one principal that challenges it.
func TestChallengerReply(t *testing.T) {
	for _, tc := range []struct {
		reply string
		want  bool
	}{
		{busauth.InboxPrefix(busauth.AttestWorker) + ".abc", true},
		{busauth.InboxPrefix(busauth.AttestWorker), false},
		{busauth.InboxPrefix(busauth.AttestWorker) + "x.abc", false},
		{busauth.InboxPrefix(busauth.Keyguard) + ".abc", false},
		{busauth.AgentInboxPrefix("vm") + ".abc", false},
		{"_INBOX.abc", false},
		{"vigil.keyguard.release.vm", false},
	} {
		if got := challengerReply("vigil.agent.vm.challenge", tc.reply); got != tc.want {
			t.Errorf("challengerReply(%q) = %v, want %v", tc.reply, got, tc.want)
		}
	}
}
