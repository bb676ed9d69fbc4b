package azuresim

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLifecycleEventShape(t *testing.T) {
	spec := VMSpec{Subscription: "sub", ResourceGroup: "RG-Prod", Name: "cvm-01"}
	tests := []struct {
		op        Op
		eventType string
		operation string
	}{
		{OpCreate, "Microsoft.Resources.ResourceWriteSuccess", "Microsoft.Compute/virtualMachines/write"},
		{OpStart, "Microsoft.Resources.ResourceActionSuccess", "Microsoft.Compute/virtualMachines/start/action"},
		{OpDeallocate, "Microsoft.Resources.ResourceActionSuccess", "Microsoft.Compute/virtualMachines/deallocate/action"},
		{OpPowerOff, "Microsoft.Resources.ResourceActionSuccess", "Microsoft.Compute/virtualMachines/powerOff/action"},
		{OpRestart, "Microsoft.Resources.ResourceActionSuccess", "Microsoft.Compute/virtualMachines/restart/action"},
		{OpDelete, "Microsoft.Resources.ResourceDeleteSuccess", "Microsoft.Compute/virtualMachines/delete"},
	}
	for _, tc := range tests {
		ev := LifecycleEvent(spec, tc.op, time.Now())
		var data struct {
			OperationName string
			ResourceURI   string `json:"resourceUri"`
			Authorization struct{ Evidence json.RawMessage }
		}
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
		if ev.EventType != tc.eventType || data.OperationName != tc.operation {
			t.Errorf("%s: %s %s", tc.op, ev.EventType, data.OperationName)
		}
		if !strings.Contains(ev.Subject, "/resourcegroups/RG-Prod/") || data.ResourceURI != ev.Subject {
			t.Errorf("%s: subject %s", tc.op, ev.Subject)
		}
		if tc.op == OpStart && string(data.Authorization.Evidence) != "[]" {
			t.Errorf("start evidence %s, want []", data.Authorization.Evidence)
		}
	}
}

func TestSenderRetriesLikeEventGrid(t *testing.T) {
	var calls atomic.Int32
	statuses := []int{http.StatusServiceUnavailable, http.StatusTooManyRequests, http.StatusOK}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := calls.Add(1)
		if r.Header.Get("aeg-event-type") == "SubscriptionValidation" {
			var evs []Event
			_ = json.NewDecoder(r.Body).Decode(&evs)
			var d struct{ ValidationCode string }
			_ = json.Unmarshal(evs[0].Data, &d)
			_ = json.NewEncoder(w).Encode(map[string]string{"validationResponse": d.ValidationCode})
			return
		}
		w.WriteHeader(statuses[min(int(n)-1, len(statuses)-1)])
	}))
	defer srv.Close()
	s := &Sender{URL: srv.URL, Backoff: time.Millisecond}
	ev := LifecycleEvent(VMSpec{Subscription: "s", ResourceGroup: "rg", Name: "vm"}, OpStart, time.Now())
	if err := s.Send(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d attempts, want 3", n)
	}
	if err := s.Validate(context.Background()); err != nil {
		t.Fatal(err)
	}

	rejecting := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusBadRequest) }))
	defer rejecting.Close()
	s = &Sender{URL: rejecting.URL, Backoff: time.Millisecond}
	if err := s.Send(context.Background(), ev); !errors.Is(err, ErrRejected) {
		t.Fatalf("err = %v, want ErrRejected", err)
	}
}
