package notifier_test

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier"
)

// TestTagFilters: filters on "tag.<name>" match the Azure tags of the
// alert's VM as the inventory (vigil-vms) records them: a subscription
// gets the alerts of the VMs whose tags it selects and not the others'.
func TestTagFilters(t *testing.T) {
	e := newEnv(t)
	kv, err := e.conn.JS.KeyValue(ctxT(t), events.BucketVMs)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []events.VM{
		{VMKey: vmA, Name: "pay-01", ResourceGroup: "rg-prod", Tags: map[string]string{"env": "prod", "team": "payments"}},
		{VMKey: vmB, Name: "plat-01", ResourceGroup: "rg-staging", Tags: map[string]string{"env": "staging", "team": "platform"}},
	} {
		b, err := json.Marshal(vm)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctxT(t), vm.VMKey, b); err != nil {
			t.Fatal(err)
		}
	}
	e.start(e.config())
	tests := []struct {
		name   string
		filter notifier.Filter
		want   []string // vm/code of the deliveries, in order
	}{
		{name: "exact env", filter: notifier.Filter{Exact: map[string]string{"tag.env": "prod"}},
			want: []string{"pay-01/vm.untrusted", "pay-01/marker"}},
		{name: "glob team", filter: notifier.Filter{Glob: map[string]string{"tag.team": "plat*"}},
			want: []string{"plat-01/vm.untrusted", "plat-01/marker"}},
		{name: "not env", filter: notifier.Filter{Not: &notifier.Filter{Exact: map[string]string{"tag.env": "prod"}}},
			want: []string{"plat-01/vm.untrusted", "plat-01/marker"}},
	}
	receivers := make([]*receiver, len(tests))
	for i, tt := range tests {
		receivers[i] = newReceiver(t, nil)
		e.subscribe(fmt.Sprintf("tags-%d", i), receivers[i].URL, func(r *notifier.Request) { r.Filters = []notifier.Filter{tt.filter} })
	}
	// The alerts share a key, so each subscription handles them in order:
	// the alert it refuses comes before the last it takes.
	t0 := time.Now().UTC()
	for i, a := range []struct{ vm, code string }{{vmA, "vm.untrusted"}, {vmB, "vm.untrusted"}, {vmA, "marker"}, {vmB, "marker"}} {
		e.alert(events.Alert{Code: a.code, VMKey: a.vm, Key: "tags-probe", At: t0.Add(time.Duration(i) * time.Millisecond)})
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := waitAccepted(t, receivers[i], len(tt.want), 20*time.Second)
			var names []string
			for _, d := range got {
				name := "?"
				if vm := d.Event.Data.VM; vm != nil {
					name = vm.Name
				}
				names = append(names, name+"/"+d.Event.Data.Alert.Code)
			}
			if !slices.Equal(names, tt.want) {
				t.Errorf("deliveries %v, want %v", names, tt.want)
			}
		})
	}
}
