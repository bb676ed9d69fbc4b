package busauth

import (
	"fmt"
	"strings"

	"github.com/vigil-cc/vigil/pkg/events"
)

// Principal is a kind of bus user: a service, a reader, an administrator or
// an agent. Each has a scoped signing key in the Vigil account whose
// template holds its permissions (Permissions).
type Principal string

// The principals.
const (
	Ingest       Principal = "ingest"
	AttestWorker Principal = "attest-worker"
	Keyguard     Principal = "keyguard"
	Auditor      Principal = "auditor"
	// Notifier forwards alerts from VIGIL_ALERTS (durable vigil-notifier).
	Notifier Principal = "notifier"
	// Console reads streams and buckets, as vigil dev's live view does.
	Console Principal = "console"
	// Admin provisions streams and buckets, publishes policy versions,
	// uses keyguard's operator API and stores secrets. Administrators are
	// named (AdminCreds); Init makes the first one, named DefaultAdminName.
	Admin Principal = "admin"
	// Agent is one VM's agent, named by its VM key (AgentCreds).
	Agent Principal = "agent"
)

// DefaultAdminName names the administrator Init makes.
const DefaultAdminName = "admin"

// Principals returns the principals Init makes a user for, in a stable
// order: the services, the readers and the first administrator. Agents
// are minted one by one.
func Principals() []Principal {
	return []Principal{Ingest, AttestWorker, Keyguard, Auditor, Notifier, Console, Admin}
}

// all is every principal with a scoped signing key.
func all() []Principal { return append(Principals(), Agent) }

func (p Principal) valid() bool {
	for _, q := range all() {
		if p == q {
			return true
		}
	}
	return false
}

// Inbox prefixes.
const (
	inboxPrefix      = "_INBOX_"
	agentInboxPrefix = "_INBOX_agent"
	adminInboxPrefix = "_INBOX_admin"
	nameTemplate     = "{{name()}}"
)

// InboxPrefix is the inbox prefix of a service or reader principal, to be
// given to nats.CustomInboxPrefix: _INBOX_<principal>. For Admin it is the
// first administrator's (AdminInboxPrefix(DefaultAdminName)); an agent's is
// AgentInboxPrefix.
func InboxPrefix(p Principal) string {
	switch p {
	case Agent:
		return agentInboxPrefix + "." + nameTemplate
	case Admin:
		return AdminInboxPrefix(DefaultAdminName)
	}
	return inboxPrefix + string(p)
}

// AgentInboxPrefix is the inbox prefix of the agent of the VM with key vm:
// _INBOX_agent.<vm>.
func AgentInboxPrefix(vm string) string { return agentInboxPrefix + "." + vm }

// AdminInboxPrefix is the inbox prefix of the administrator named name:
// _INBOX_admin.<name>.
func AdminInboxPrefix(name string) string { return adminInboxPrefix + "." + name }

// ReplyAllowed reports whether reply, a request's reply subject, lies under
// prefix, the inbox prefix of the principal the requester authenticated
// as: a responder answers only such requests, so that a requester cannot
// have its answer published elsewhere with the responder's permissions.
func ReplyAllowed(prefix, reply string) bool {
	return prefix != "" && strings.HasPrefix(reply, prefix+".") && len(reply) > len(prefix)+1
}

// AdminPolicySubject is where the administrator named admin publishes a
// version of the policy id: vigil.events.policy.<id>.<admin>, the
// PolicySubject of id with the administrator's name, which its
// permissions pin, as a last token.
func AdminPolicySubject(id, admin string) string { return events.PolicySubject(id, admin) }

// AdminRequestSubject is where the administrator named admin requests
// keyguard's operator action (restore, revoke, grant):
// vigil.keyguard.admin.<action>.<admin>.
func AdminRequestSubject(action, admin string) string {
	return subjectKeyguardAdmin + "." + events.Token(action) + "." + admin
}

// subjectKeyguardAdmin is the prefix of keyguard's operator API
// (services/keyguard/admin.go).
const subjectKeyguardAdmin = "vigil.keyguard.admin"

// ValidAdminName reports whether name can name an administrator: 1 to 64
// characters of [a-z0-9_-] starting with a letter or digit, so that it is
// one subject token and no wildcard.
func ValidAdminName(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '-' || c == '_') && i > 0:
		default:
			return false
		}
	}
	return true
}

// checkName checks the name of a user of p: a VM key for agents, an admin
// name for administrators, the principal itself for the others.
func checkName(p Principal, name string) error {
	switch p {
	case Agent:
		if !events.ValidVMKey(name) {
			return fmt.Errorf("busauth: %q is not a VM key", name)
		}
	case Admin:
		if !ValidAdminName(name) {
			return fmt.Errorf("busauth: %q is not an admin name (1 to 64 characters of [a-z0-9_-], starting with a letter or digit)", name)
		}
	default:
		if name != string(p) {
			return fmt.Errorf("busauth: a %s user is named %s, not %q", p, p, name)
		}
	}
	return nil
}

// userInboxPrefix is the inbox prefix of the user of p named name.
func userInboxPrefix(p Principal, name string) string {
	switch p {
	case Agent:
		return AgentInboxPrefix(name)
	case Admin:
		return AdminInboxPrefix(name)
	}
	return InboxPrefix(p)
}
