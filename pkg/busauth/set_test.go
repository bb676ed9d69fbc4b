package busauth_test

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// Two VM keys: the agent under test runs on vmA, its victim on vmB.
const (
	vmA = "aaaaaaaaaaaaaaaaaaaaaaaaaa"
	vmB = "bbbbbbbbbbbbbbbbbbbbbbbbbb"
)

// TestInitClaims decodes every JWT Init makes and checks the chain of
// trust and the claims: a self-signed operator with two signing keys (the
// second Revoker's) and strict signing key use, naming the system
// account, which has one scoped signing key, the revoker's; both accounts
// signed by the operator signing key; the Vigil account with JetStream,
// no bearer tokens, nothing by default and one scoped signing key per
// principal whose template is Permissions; one user per principal, issued
// by its scoped key, with no permissions of its own.
func TestInitClaims(t *testing.T) {
	set, err := busauth.Init(busauth.Options{UserTTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	op, err := jwt.DecodeOperatorClaims(set.OperatorJWT())
	if err != nil {
		t.Fatal(err)
	}
	if op.Issuer != op.Subject || op.Name != busauth.DefaultOperatorName || !op.StrictSigningKeyUsage ||
		len(op.SigningKeys) != 2 || op.SystemAccount != set.SystemAccount() {
		t.Fatalf("operator: %+v", op.Operator)
	}
	jwts := set.AccountJWTs()
	if len(jwts) != 2 {
		t.Fatalf("%d account JWTs", len(jwts))
	}
	var acc *jwt.AccountClaims
	for _, token := range jwts {
		ac, err := jwt.DecodeAccountClaims(token)
		if err != nil {
			t.Fatal(err)
		}
		if ac.Issuer == op.Subject || !op.SigningKeys.Contains(ac.Issuer) || !op.DidSign(ac) {
			t.Errorf("account %s issued by %s, not the operator signing key", ac.Name, ac.Issuer)
		}
		switch ac.Subject {
		case set.SystemAccount():
			if ac.Name != busauth.SystemAccountName {
				t.Errorf("system account named %s", ac.Name)
			}
			keys := ac.SigningKeys.Keys()
			if len(keys) != 1 {
				t.Fatalf("system account signing keys: %v", keys)
			}
			sc, _ := ac.SigningKeys.GetScope(keys[0])
			us, ok := sc.(*jwt.UserScope)
			if !ok || us.Role != string(busauth.SysRevoker) ||
				!equal(us.Template.Pub.Allow, []string{busauth.ClaimsUpdateSubject(set.Account())}) ||
				!equal(us.Template.Sub.Allow, []string{"_INBOX_revoker.>"}) || len(us.Template.Pub.Deny)+len(us.Template.Sub.Deny) != 0 {
				t.Errorf("system account signing keys: %v", ac.SigningKeys)
			}
		case set.Account():
			acc = ac
		default:
			t.Errorf("unknown account %s", ac.Subject)
		}
	}
	if acc == nil || acc.Name != busauth.DefaultAccountName {
		t.Fatal("no Vigil account")
	}
	if !acc.Limits.IsJSEnabled() || acc.Limits.DiskStorage != jwt.NoLimit || !acc.Limits.DisallowBearer ||
		!reflect.DeepEqual(acc.DefaultPermissions.Pub.Deny, jwt.StringList{">"}) || !reflect.DeepEqual(acc.DefaultPermissions.Sub.Deny, jwt.StringList{">"}) {
		t.Errorf("account limits or default permissions: %+v, %+v", acc.Limits, acc.DefaultPermissions)
	}
	scopes := map[string]*jwt.UserScope{} // role → scope
	for _, k := range acc.SigningKeys.Keys() {
		sc, _ := acc.SigningKeys.GetScope(k)
		us, ok := sc.(*jwt.UserScope)
		if !ok {
			t.Fatalf("signing key %s is not scoped", k)
		}
		scopes[us.Role] = us
	}
	if len(scopes) != len(busauth.Principals())+1 {
		t.Fatalf("%d scoped signing keys", len(scopes))
	}
	for role, us := range scopes {
		p := busauth.Principal(role)
		want := busauth.Permissions(p)
		tpl := us.Template
		if !equal(tpl.Pub.Allow, want.Publish.Allow) || !equal(tpl.Pub.Deny, want.Publish.Deny) ||
			!equal(tpl.Sub.Allow, want.Subscribe.Allow) || !equal(tpl.Sub.Deny, want.Subscribe.Deny) || (tpl.Resp != nil) != want.Responses {
			t.Errorf("template of %s differs from Permissions", role)
		}
		if slices.Contains(tpl.AllowedConnectionTypes, jwt.ConnectionTypeWebsocket) || !slices.Contains(tpl.AllowedConnectionTypes, jwt.ConnectionTypeStandard) {
			t.Errorf("%s connection types %v", role, tpl.AllowedConnectionTypes)
		}
	}
	for _, p := range busauth.Principals() {
		c, err := set.Creds(p)
		if err != nil {
			t.Fatal(err)
		}
		uc, err := jwt.DecodeUserClaims(c.JWT)
		if err != nil {
			t.Fatal(err)
		}
		name := string(p)
		if p == busauth.Admin {
			name = busauth.DefaultAdminName
		}
		if uc.Issuer != scopes[string(p)].Key || uc.IssuerAccount != set.Account() || uc.Name != name || !uc.HasEmptyPermissions() {
			t.Errorf("user of %s: issuer %s, account %s, name %s, own permissions %v", p, uc.Issuer, uc.IssuerAccount, uc.Name, !uc.HasEmptyPermissions())
		}
		if d := time.Until(time.Unix(uc.Expires, 0)); d < 59*time.Minute || d > time.Hour {
			t.Errorf("user of %s expires in %s", p, d)
		}
		if c.InboxPrefix != busauth.InboxPrefix(p) || c.PublicKey() != uc.Subject {
			t.Errorf("credentials of %s: %v", p, c)
		}
		kp, err := nkeys.FromSeed([]byte(c.Seed))
		if err != nil {
			t.Fatal(err)
		}
		if pub, _ := kp.PublicKey(); pub != uc.Subject {
			t.Errorf("the seed of %s is not its key", p)
		}
	}
	if _, err := set.Creds(busauth.Agent); err == nil {
		t.Error("Init made an agent")
	}
}

func equal(a jwt.StringList, b []string) bool {
	return slices.Equal([]string(a), b) || len(a) == 0 && len(b) == 0
}

// TestAgentCreds: an agent's JWT names its VM key, expires after a day
// unless told otherwise, is issued by the agents' scoped key and holds no
// permissions of its own; its inbox prefix is the agent's.
func TestAgentCreds(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		ttl, want time.Duration
	}{{0, busauth.DefaultAgentTTL}, {time.Hour, time.Hour}} {
		c, err := set.AgentCreds(vmA, tc.ttl)
		if err != nil {
			t.Fatal(err)
		}
		uc, err := jwt.DecodeUserClaims(c.JWT)
		if err != nil {
			t.Fatal(err)
		}
		if uc.Name != vmA || !uc.HasEmptyPermissions() || c.InboxPrefix != "_INBOX_agent."+vmA || c.Principal != busauth.Agent {
			t.Errorf("agent: %v, %+v", c, uc)
		}
		if d := time.Until(time.Unix(uc.Expires, 0)); d > tc.want || d < tc.want-time.Minute {
			t.Errorf("ttl %s: expires in %s", tc.ttl, d)
		}
		acc, _ := jwt.DecodeAccountClaims(set.AccountJWT())
		sc, ok := acc.SigningKeys.GetScope(uc.Issuer)
		if us, isUser := sc.(*jwt.UserScope); !ok || !isUser || us.Role != string(busauth.Agent) {
			t.Errorf("agent JWT issued by %s", uc.Issuer)
		}
	}
	// Enrollment: a JWT for a key whose seed stays with the agent.
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	token, err := set.IssueUser(busauth.Agent, vmA, pub, 0)
	if err != nil {
		t.Fatal(err)
	}
	if uc, _ := jwt.DecodeUserClaims(token); uc.Subject != pub || uc.Name != vmA {
		t.Errorf("issued %+v", uc)
	}
}

// TestAgentPermissionsVector: the agent's template, exactly.
func TestAgentPermissionsVector(t *testing.T) {
	want := busauth.Access{
		Publish:     busauth.Subjects{Allow: []string{"vigil.keyguard.nonce.{{name()}}", "vigil.keyguard.release.{{name()}}"}},
		Subscribe:   busauth.Subjects{Allow: []string{"vigil.agent.{{name()}}.challenge", "_INBOX_agent.{{name()}}.>"}},
		Responses:   true,
		InboxPrefix: "_INBOX_agent.{{name()}}",
	}
	if got := busauth.Permissions(busauth.Agent); !reflect.DeepEqual(got, want) {
		t.Fatalf("agent:\n got %+v\nwant %+v", got, want)
	}
}

// TestEveryPrincipalHearsOnlyItsOwnInbox: no principal may subscribe to a
// subject that matches another principal's inbox, _INBOX.> or the
// default inbox prefix; each may subscribe to its own.
func TestEveryPrincipalHearsOnlyItsOwnInbox(t *testing.T) {
	inboxes := map[busauth.Principal]string{busauth.Agent: busauth.AgentInboxPrefix(vmA) + ".x"}
	for _, p := range busauth.Principals() {
		inboxes[p] = busauth.InboxPrefix(p) + ".x"
	}
	for p := range inboxes {
		a := busauth.Permissions(p)
		own := strings.ReplaceAll(a.InboxPrefix, "{{name()}}", vmA)
		if p == busauth.Admin {
			own = strings.ReplaceAll(a.InboxPrefix, "{{name()}}", busauth.DefaultAdminName)
		}
		heard := false
		for _, s := range a.Subscribe.Allow {
			s = strings.ReplaceAll(s, "{{name()}}", map[bool]string{true: busauth.DefaultAdminName, false: vmA}[p == busauth.Admin])
			if s == "_INBOX.>" || matches(s, "_INBOX.x") || matches(s, "_INBOX_agent."+vmB+".x") || matches(s, "_INBOX_admin.mallory.x") {
				t.Errorf("%s may subscribe to %s", p, s)
			}
			for q, inbox := range inboxes {
				if q != p && matches(s, inbox) {
					t.Errorf("%s may subscribe to %s, which covers %s's inbox", p, s, q)
				}
			}
			heard = heard || matches(s, own+".x")
		}
		if !heard {
			t.Errorf("%s may not subscribe to its inbox %s", p, own)
		}
	}
}

// matches reports whether the NATS subject pattern p matches subject s.
func matches(p, s string) bool {
	pt, st := strings.Split(p, "."), strings.Split(s, ".")
	for i, tok := range pt {
		switch {
		case tok == ">":
			return len(st) > i
		case i >= len(st):
			return false
		case tok != "*" && tok != st[i]:
			return false
		}
	}
	return len(pt) == len(st)
}

// TestWriteDirLoadDir: what WriteDir writes LoadDir reads back, a
// revocation included; secrets are 0600 in 0700 directories; a seed
// readable by others or a file of another identity is refused.
func TestWriteDirLoadDir(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	revoked, _ := set.AgentCreds(vmA, 0)
	if err := set.Revoke(revoked.PublicKey()); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "auth")
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	err = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		secret := strings.HasSuffix(path, ".nk") || strings.HasSuffix(path, ".creds")
		switch mode := fi.Mode().Perm(); {
		case d.IsDir() && (rel == "signing" || rel == "creds") && mode != 0o700:
			t.Errorf("%s: mode %04o", rel, mode)
		case secret && mode != 0o600:
			t.Errorf("%s: mode %04o", rel, mode)
		case !d.IsDir() && !secret && mode != 0o644:
			t.Errorf("%s: mode %04o", rel, mode)
		case strings.HasPrefix(d.Name(), "."):
			t.Errorf("temporary file left: %s", rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, err := busauth.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got.OperatorJWT() != set.OperatorJWT() || !slices.Equal(got.AccountJWTs(), set.AccountJWTs()) || got.ServerConfig() != set.ServerConfig() {
		t.Fatal("loaded set differs")
	}
	for _, p := range busauth.Principals() {
		a, _ := set.Creds(p)
		b, _ := got.Creds(p)
		if a.JWT != b.JWT || a.Seed != b.Seed || a.InboxPrefix != b.InboxPrefix || a.Principal != b.Principal {
			t.Errorf("credentials of %s differ", p)
		}
	}
	acc, _ := jwt.DecodeAccountClaims(got.AccountJWT())
	if _, ok := acc.Revocations[revoked.PublicKey()]; !ok {
		t.Error("revocation lost")
	}
	// The loaded set signs agents the account accepts.
	c, err := got.AgentCreds(vmB, 0)
	if err != nil {
		t.Fatal(err)
	}
	uc, _ := jwt.DecodeUserClaims(c.JWT)
	if !acc.SigningKeys.Contains(uc.Issuer) {
		t.Error("agent issued by a key the account does not know")
	}

	// A seed readable by others.
	seed := filepath.Join(dir, busauth.SigningKeyFile(busauth.Agent))
	if err := os.Chmod(seed, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := busauth.LoadDir(dir); !errors.Is(err, keyfile.ErrPermissive) {
		t.Errorf("permissive seed: %v", err)
	}
	if err := os.Chmod(seed, 0o600); err != nil {
		t.Fatal(err)
	}
	// Another identity's signing key.
	other, _ := busauth.Init(busauth.Options{})
	odir := t.TempDir()
	if err := other.WriteDir(odir); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(odir, busauth.SigningKeyFile(busauth.Agent)))
	if err := os.WriteFile(seed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := busauth.LoadDir(dir); !errors.Is(err, busauth.ErrInconsistent) {
		t.Errorf("another identity's key: %v", err)
	}
}

// TestCredentialsNeverPrintTheirSeed: credentials formatted or logged in
// any way show their name and key, never their seed.
func TestCredentialsNeverPrintTheirSeed(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := set.AgentCreds(vmA, 0)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	log.Info("creds", "creds", c)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("creds", "creds", c)
	for _, s := range []string{fmt.Sprint(c), fmt.Sprintf("%v %+v %#v %s", c, c, c, c), fmt.Sprintf("%v", &c), logs.String()} {
		if strings.Contains(s, c.Seed) || strings.Contains(s, c.Seed[:20]) {
			t.Fatalf("seed printed: %s", s)
		}
		if !strings.Contains(s, c.PublicKey()) {
			t.Errorf("key not shown: %s", s)
		}
	}
	// The creds file round-trips.
	file, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	back, err := busauth.ParseCreds(file)
	if err != nil {
		t.Fatal(err)
	}
	if back.JWT != c.JWT || back.Seed != c.Seed || back.InboxPrefix != c.InboxPrefix || back.Principal != busauth.Agent {
		t.Errorf("parsed %v", back)
	}
}

// TestReplyAllowed: a responder answers only under the requester's inbox
// prefix, never on the prefix itself or a look-alike.
func TestReplyAllowed(t *testing.T) {
	prefix := busauth.AgentInboxPrefix(vmA)
	for _, tc := range []struct {
		reply string
		ok    bool
	}{
		{prefix + ".abc.1", true},
		{prefix + ".x", true},
		{prefix, false},
		{prefix + ".", false},
		{prefix + "b.x", false},
		{busauth.AgentInboxPrefix(vmB) + ".x", false},
		{"$KV.vigil-status." + vmA, false},
		{"", false},
	} {
		if got := busauth.ReplyAllowed(prefix, tc.reply); got != tc.ok {
			t.Errorf("ReplyAllowed(%q, %q) = %v", prefix, tc.reply, got)
		}
	}
	if busauth.ReplyAllowed("", ".x") {
		t.Error("an empty prefix allows replies")
	}
}
