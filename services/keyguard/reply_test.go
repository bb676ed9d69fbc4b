package keyguard

import (
	"testing"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
)

// TestRequesterReply: in operator mode keyguard answers release and nonce
// requests on vigil.keyguard.{nonce,release}.<vm> only under that VM's
// agent's inbox and operator requests only under the administrator's,
// never elsewhere where its permissions reach.
func TestRequesterReply(t *testing.T) {
	vm := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1")
	other := events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm2")
	agent := busauth.AgentInboxPrefix(vm) + ".abc"
	admin := busauth.AdminInboxPrefix("alice") + ".abc"
	for _, tc := range []struct {
		subject, reply string
		want           bool
	}{
		{events.KeyguardNonceSubject(vm), "_INBOX.abc", false},
		{events.KeyguardNonceSubject(vm), busauth.InboxPrefix(busauth.Ingest) + ".abc", false},
		{events.KeyguardNonceSubject(vm), busauth.AgentInboxPrefix("not-a-vm-key") + ".abc", false},
		{events.KeyguardNonceSubject(vm), busauth.AgentInboxPrefix(vm), false},
		{events.KeyguardNonceSubject(vm), busauth.AgentInboxPrefix(vm) + ".", false},
		{events.KeyguardNonceSubject(vm), "$KV." + events.BucketGrants + "." + vm, false},
		{events.KeyguardNonceSubject(vm), "vigil.events.vm." + vm + ".key", false},
		// The unpinned subjects of earlier releases are no longer served.
		{"vigil.keyguard.nonce", agent, false},
		{"vigil.keyguard.release", agent, false},
		{events.KeyguardNonceSubject("not-a-vm-key"), busauth.AgentInboxPrefix("not-a-vm-key") + ".abc", false},
		{events.KeyguardNonceSubject(vm) + ".x", agent, false},
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
