package normalize

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

const sub = "5a5e7b6c-0000-4000-8000-000000000001"

// realWrite is shaped like a real ResourceWriteSuccess delivery: lower-case
// "resourcegroups" in subject and resourceUri, "evidence" as an empty
// array, numeric and array claims.
const realWrite = `{
  "subject": "/subscriptions/5a5e7b6c-0000-4000-8000-000000000001/resourcegroups/cvm-prod/providers/Microsoft.Compute/virtualMachines/cvm-01",
  "eventType": "Microsoft.Resources.ResourceWriteSuccess",
  "id": "9b7e1c44-2f6a-4bbd-8a3e-1f1e6a0c5d10",
  "data": {
    "authorization": {
      "scope": "/subscriptions/5a5e7b6c-0000-4000-8000-000000000001/resourcegroups/cvm-prod/providers/Microsoft.Compute/virtualMachines/cvm-01",
      "action": "Microsoft.Compute/virtualMachines/write",
      "evidence": []
    },
    "claims": {
      "aud": "https://management.core.windows.net/",
      "iss": "https://sts.windows.net/72f988bf-0000-0000-0000-000000000000/",
      "iat": 1732112233,
      "nbf": 1732112233,
      "exp": 1732116133,
      "groups": ["a", "b"],
      "xms_tcdt": 1289000000,
      "http://schemas.microsoft.com/identity/claims/objectidentifier": "6f1e0000-0000-0000-0000-000000000000"
    },
    "correlationId": "c0ffee00-0000-4000-8000-000000000000",
    "httpRequest": {"clientRequestId": "", "clientIpAddress": "20.1.2.3", "method": "PUT", "url": "https://management.azure.com/subscriptions/5a5e7b6c-0000-4000-8000-000000000001/resourcegroups/cvm-prod/providers/Microsoft.Compute/virtualMachines/cvm-01?api-version=2024-07-01"},
    "resourceProvider": "Microsoft.Compute",
    "resourceUri": "/subscriptions/5a5e7b6c-0000-4000-8000-000000000001/resourcegroups/cvm-prod/providers/Microsoft.Compute/virtualMachines/cvm-01",
    "operationName": "Microsoft.Compute/virtualMachines/write",
    "status": "Succeeded",
    "subscriptionId": "5a5e7b6c-0000-4000-8000-000000000001",
    "tenantId": "72f988bf-0000-0000-0000-000000000000"
  },
  "dataVersion": "2",
  "metadataVersion": "1",
  "eventTime": "2026-11-20T18:38:04.6117357Z",
  "topic": "/subscriptions/5a5e7b6c-0000-4000-8000-000000000001"
}`

func parse(t *testing.T, s string) eventgrid.Event {
	t.Helper()
	ev, err := eventgrid.ParseEvent([]byte(s), eventgrid.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func TestRealShapedARMWrite(t *testing.T) {
	c, err := FromEvent(parse(t, realWrite))
	if err != nil {
		t.Fatal(err)
	}
	want := "/subscriptions/" + sub + "/resourceGroups/cvm-prod/providers/Microsoft.Compute/virtualMachines/cvm-01"
	if c.VM.ResourceID != want || c.VM.Name != "cvm-01" || c.VM.ResourceGroup != "cvm-prod" || c.VM.Subscription != sub {
		t.Fatalf("vm %+v", c.VM)
	}
	if !c.Write || !c.Lifecycle || !c.Enrich || c.Outcome != "Succeeded" || c.CorrelationID == "" {
		t.Fatalf("change %+v", c)
	}
	if c.VM.Key() != events.VMKey(strings.ToLower(want)) {
		t.Error("VM key depends on spelling")
	}
	if !c.OccurredAt.Equal(time.Date(2026, 11, 20, 18, 38, 4, 611735700, time.UTC)) {
		t.Errorf("time %v", c.OccurredAt)
	}
}

func armEvent(typ, op, id string) string {
	return `{"specversion":"1.0","id":"e-` + op + `","source":"/subscriptions/` + sub + `","type":"` + typ + `",
	  "subject":"` + id + `","time":"2026-11-20T10:00:00Z",
	  "data":{"operationName":{"value":"` + op + `","localizedValue":"x"},"resourceUri":"` + id + `","status":"Succeeded","claims":{"iat":1}}}`
}

func TestLifecycleKinds(t *testing.T) {
	vm := "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	tests := []struct {
		typ, op string
		kind    events.LifecycleKind
		write   bool
	}{
		{TypeWriteSuccess, "Microsoft.Compute/virtualMachines/write", "", true},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/start/action", events.LifecycleStarted, false},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/restart/action", events.LifecycleRestarted, false},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/redeploy/action", events.LifecycleRestarted, false},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/powerOff/action", events.LifecycleStopped, false},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/deallocate/action", events.LifecycleDeallocated, false},
		{TypeDeleteSuccess, "Microsoft.Compute/virtualMachines/delete", events.LifecycleDeleted, false},
		{TypeActionSuccess, "Microsoft.Compute/virtualMachines/reapply/action", events.LifecycleUpdated, false},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			c, err := FromEvent(parse(t, armEvent(tt.typ, tt.op, vm)))
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind != tt.kind || c.Write != tt.write || !c.Lifecycle {
				t.Fatalf("change %+v", c)
			}
		})
	}
}

func TestExtensionWriteUpdatesParent(t *testing.T) {
	ext := "/subscriptions/" + sub + "/resourcegroups/rg/providers/Microsoft.Compute/virtualMachines/vm/extensions/VMSnapshotLinux"
	c, err := FromEvent(parse(t, armEvent(TypeWriteSuccess, "Microsoft.Compute/virtualMachines/extensions/write", ext)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind != events.LifecycleUpdated || c.VM.Name != "vm" || !c.Enrich {
		t.Fatalf("change %+v", c)
	}
}

func TestFailuresOnlyEnrich(t *testing.T) {
	vm := "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	c, err := FromEvent(parse(t, armEvent(TypeActionFailure, "Microsoft.Compute/virtualMachines/start/action", vm)))
	if err != nil {
		t.Fatal(err)
	}
	if c.Lifecycle || !c.Enrich || c.Outcome != "Failed" {
		t.Fatalf("change %+v", c)
	}
}

func TestIgnored(t *testing.T) {
	for name, s := range map[string]string{
		"storage account": armEvent(TypeWriteSuccess, "Microsoft.Storage/storageAccounts/write", "/subscriptions/"+sub+"/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/sa"),
		"blob created":    `{"specversion":"1.0","id":"1","source":"s","type":"Microsoft.Storage.BlobCreated","data":{}}`,
		"run command":     armEvent(TypeActionSuccess, "Microsoft.Compute/virtualMachines/runCommand/action", "/subscriptions/"+sub+"/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"),
		"resource group":  armEvent(TypeWriteSuccess, "Microsoft.Resources/subscriptions/resourceGroups/write", "/subscriptions/"+sub+"/resourceGroups/rg"),
	} {
		if _, err := FromEvent(parse(t, s)); !errors.Is(err, ErrIgnored) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestMalformedVMEvent(t *testing.T) {
	s := `{"specversion":"1.0","id":"1","source":"s","type":"` + TypeWriteSuccess + `","time":"2026-11-20T10:00:00Z","data":"oops"}`
	if _, err := FromEvent(parse(t, s)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v", err)
	}
	s = `{"specversion":"1.0","id":"1","source":"s","type":"` + TypeWriteSuccess + `","time":"2026-11-20T10:00:00Z","subject":"/subscriptions//resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm","data":{}}`
	if _, err := FromEvent(parse(t, s)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("empty subscription: err = %v", err)
	}
}

func TestResourceNotifications(t *testing.T) {
	id := "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	created := `{"specversion":"1.0","id":"n1","source":"/subscriptions/` + sub + `","type":"` + TypeNotifCreatedOrUpdated + `","subject":"` + id + `","time":"2026-11-20T10:00:05Z",
	  "data":{"resourceInfo":{"id":"` + id + `","name":"vm","type":"Microsoft.Compute/virtualMachines","location":"westeurope","properties":{"vmId":"x"}},
	          "operationalInfo":{"resourceEventTime":"2026-11-20T10:00:01.5Z"},"apiVersion":"2024-07-01"}}`
	c, err := FromEvent(parse(t, created))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Write || !c.OccurredAt.Equal(time.Date(2026, 11, 20, 10, 0, 1, 500000000, time.UTC)) {
		t.Fatalf("created: %+v", c)
	}
	deleted := strings.Replace(strings.Replace(created, TypeNotifCreatedOrUpdated, TypeNotifDeleted, 1), `"id":"n1"`, `"id":"n2"`, 1)
	if c, err = FromEvent(parse(t, deleted)); err != nil || c.Kind != events.LifecycleDeleted {
		t.Fatalf("deleted: %+v %v", c, err)
	}
}

func health(typ, props string) string {
	id := "/subscriptions/" + sub + "/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm"
	return `{"specversion":"1.0","id":"h1","source":"/subscriptions/` + sub + `","type":"` + typ + `",
	  "subject":"` + id + `/providers/Microsoft.ResourceHealth/availabilityStatuses/current","time":"2026-11-20T10:00:05Z",
	  "data":{"resourceInfo":{"id":"` + id + `/providers/Microsoft.ResourceHealth/availabilityStatuses/current","name":"current","type":"Microsoft.ResourceHealth/availabilityStatuses",
	  "properties":{` + props + `,"occurredTime":"2026-11-20T10:00:02Z"}},"operationalInfo":{"resourceEventTime":"2026-11-20T10:00:03Z"},"apiVersion":"2023-12-01"}}`
}

func TestHealthResources(t *testing.T) {
	tests := []struct {
		name, typ, props string
		kind             events.LifecycleKind
		live             bool
	}{
		{"unavailable", TypeHealthAvailability, `"availabilityState":"Unavailable","previousAvailabilityState":"Available"`, events.LifecycleUnavailable, false},
		{"available", TypeHealthAvailability, `"availabilityState":"Available","previousAvailabilityState":"Unavailable"`, events.LifecycleAvailable, false},
		{"live migration", TypeHealthAnnotated, `"annotationName":"LiveMigrationSucceeded","context":"Platform Initiated"`, events.LifecycleUpdated, true},
		{"reboot", TypeHealthAnnotated, `"annotationName":"VirtualMachineRebootInitiatedByControlPlane"`, events.LifecycleRestarted, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := FromEvent(parse(t, health(tt.typ, tt.props)))
			if err != nil {
				t.Fatal(err)
			}
			if c.Kind != tt.kind || c.LiveMigration != tt.live || c.VM.Name != "vm" {
				t.Fatalf("change %+v", c)
			}
			if !c.OccurredAt.Equal(time.Date(2026, 11, 20, 10, 0, 2, 0, time.UTC)) {
				t.Errorf("time %v, want occurredTime", c.OccurredAt)
			}
		})
	}
	if _, err := FromEvent(parse(t, health(TypeHealthAvailability, `"availabilityState":"Unknown"`))); !errors.Is(err, ErrIgnored) {
		t.Errorf("unknown availability: %v", err)
	}
}

func TestParseVMID(t *testing.T) {
	for _, s := range []string{
		"/subscriptions/S/resourcegroups/G/providers/microsoft.compute/virtualmachines/N",
		"/SUBSCRIPTIONS/S/RESOURCEGROUPS/G/PROVIDERS/MICROSOFT.COMPUTE/VIRTUALMACHINES/N/",
		"subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/N",
	} {
		id, child, err := ParseVMID(s)
		if err != nil || child != "" || id.ResourceID != "/subscriptions/S/resourceGroups/G/providers/Microsoft.Compute/virtualMachines/N" {
			t.Errorf("%s: %+v %q %v", s, id, child, err)
		}
	}
}
