package console

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/keyguard/grants"
)

// fillIndex puts n VMs into x: every seventh untrusted with a reason,
// every third TDX, ten resource groups, every fourth tagged env=staging
// (the others env=prod), odd ones team=platform (even ones team=payments),
// one grant each, a verdict each.
func fillIndex(x *Index, n int, now time.Time) {
	for i := range n {
		rid := fmt.Sprintf("/subscriptions/s/resourceGroups/rg-%d/providers/Microsoft.Compute/virtualMachines/vm-%06d", i%10, i)
		key := events.VMKey(rid)
		platform := "azure-sev-snp"
		if i%3 == 0 {
			platform = "azure-tdx"
		}
		tags := map[string]string{"env": "prod", "team": "payments"}
		if i%4 == 0 {
			tags["env"] = "staging"
		}
		if i%2 == 1 {
			tags["team"] = "platform"
		}
		x.PutVM(events.VM{VMKey: key, ResourceID: rid, Name: fmt.Sprintf("vm-%06d", i), ResourceGroup: fmt.Sprintf("rg-%d", i%10), Platform: platform, Tags: tags})
		st := events.VMStatus{VMKey: key, Status: events.StatusTrusted, Since: now.Add(-time.Hour), LastGoodAt: now.Add(-time.Duration(i%600) * time.Second), LastVerdictAt: now.Add(-time.Duration(i%600) * time.Second)}
		vstatus := events.VerdictAffirming
		var reasons []events.Reason
		if i%7 == 0 {
			st.Status = events.StatusUntrusted
			reasons = []events.Reason{{Code: "policy.measurement_not_allowed", Message: "measurement not allowed"}}
			st.Reasons = reasons
			vstatus = events.VerdictContraindicated
		}
		x.PutStatus(st)
		state := grants.Active
		if st.Status == events.StatusUntrusted {
			state = grants.Revoked
		}
		x.PutGrant(key+".local.fleet-secret", grants.Grant{VMKey: key, KeyName: "fleet-secret", Backend: "local", State: state}, false)
		env, err := events.New(events.TypeVerdict, "test", key, events.Verdict{ID: fmt.Sprint(i), VMKey: key, Platform: platform, Status: vstatus, Reasons: reasons,
			TCB: &events.TCB{Product: "Genoa", SNP: 21, Microcode: 72}, IssuedAt: now.Add(-time.Duration(i%3600) * time.Second)})
		if err != nil {
			panic(err)
		}
		x.AddEvent(uint64(i+1), now, events.VerdictSubject(key), env)
	}
}

// testServer serves a console for x without the bus.
func testServer(t testing.TB, cfg Config, x *Index) (*server, *httptest.Server) {
	t.Helper()
	cfg, err := cfg.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	audit, err := newAuditView(cfg.AuditLogDir, cfg.AuditURL, cfg.AuditKeyFile, cfg.AuditTimeout)
	if err != nil {
		t.Fatal(err)
	}
	s, err := newServer(cfg, x, audit)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	done := make(chan struct{})
	s.routes(mux.Handle, done)
	hs := httptest.NewServer(mux)
	t.Cleanup(func() { close(done); hs.Close() })
	return s, hs
}
