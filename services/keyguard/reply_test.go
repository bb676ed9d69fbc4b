package keyguard

import (
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

// TestRequesterReply: in operator mode keyguard answers release and nonce
// requests only under an agent's inbox and operator requests only under
// an administrator's, never elsewhere where its permissions reach.
func TestRequesterReply(t *testing.T) {
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
	other := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm2")
	agent := busauth.AgentInboxPrefix(vm) + ".abc"
	admin := busauth.AdminInboxPrefix("alice") + ".abc"
	for _, tc := range []struct {
		subject, reply string
		want           bool
	}{
		{keyrelease.SubjectNonce, agent, true},
		{keyrelease.SubjectRelease, agent, true},
		{keyrelease.SubjectRelease, admin, false},
		{keyrelease.SubjectNonce, "_INBOX.abc", false},
		{keyrelease.SubjectNonce, busauth.InboxPrefix(busauth.Ingest) + ".abc", false},
		{keyrelease.SubjectNonce, busauth.AgentInboxPrefix("not-a-vm-key") + ".abc", false},
		{keyrelease.SubjectNonce, busauth.AgentInboxPrefix(vm), false},
		{keyrelease.SubjectNonce, busauth.AgentInboxPrefix(vm) + ".", false},
		{keyrelease.SubjectNonce, "$KV." + events.BucketGrants + "." + vm, false},
		{keyrelease.SubjectNonce, "vigil.events.vm." + vm + ".key", false},
		{events.KeyguardNonceSubject(vm), agent, true},
		{events.KeyguardReleaseSubject(vm), agent, true},
		{events.KeyguardReleaseSubject(other), agent, false},
		{events.KeyguardReleaseSubject(vm), busauth.AgentInboxPrefix(other) + ".abc", false},
		{events.KeyguardReleaseSubject(vm), admin, false},
		{AdminSubject(ActionRestore, "alice"), admin, true},
		{AdminSubject(ActionRevoke, "alice"), admin, true},
		{AdminSubject(ActionGrant, "alice"), admin, true},
		{AdminSubject(ActionGrant, "bob"), admin, false},
		{SubjectAdminGrant, admin, false},
		{AdminSubject(ActionGrant, "alice"), agent, false},
		{AdminSubject(ActionGrant, "Bad*"), busauth.AdminInboxPrefix("Bad*") + ".abc", false},
		{AdminSubject(ActionGrant, "alice"), "_INBOX.abc", false},
		{"vigil.other", agent, false},
	} {
		if got := requesterReply(tc.subject, tc.reply); got != tc.want {
			t.Errorf("requesterReply(%q, %q) = %v, want %v", tc.subject, tc.reply, got, tc.want)
		}
	}
}
