// Package normalize turns Azure events about virtual machines (Azure
// Resource Manager events and Azure Resource Notifications, in either Event
// Grid schema) into VM changes: which VM, what happened, when.
//
// Azure's payloads are inconsistent in practice (an "evidence" that is an
// empty array instead of an object, claims that are numbers or arrays, lower
// case "resourcegroups" in subjects, operation names as objects), so the
// parser reads only the attributes it needs, into its own lenient types.
package normalize

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/eventgrid"
)

// Azure event types understood here.
const (
	TypeWriteSuccess  = "Microsoft.Resources.ResourceWriteSuccess"
	TypeWriteFailure  = "Microsoft.Resources.ResourceWriteFailure"
	TypeWriteCancel   = "Microsoft.Resources.ResourceWriteCancel"
	TypeDeleteSuccess = "Microsoft.Resources.ResourceDeleteSuccess"
	TypeDeleteFailure = "Microsoft.Resources.ResourceDeleteFailure"
	TypeDeleteCancel  = "Microsoft.Resources.ResourceDeleteCancel"
	TypeActionSuccess = "Microsoft.Resources.ResourceActionSuccess"
	TypeActionFailure = "Microsoft.Resources.ResourceActionFailure"
	TypeActionCancel  = "Microsoft.Resources.ResourceActionCancel"

	TypeNotifCreatedOrUpdated = "Microsoft.ResourceNotifications.Resources.CreatedOrUpdated"
	TypeNotifDeleted          = "Microsoft.ResourceNotifications.Resources.Deleted"
	TypeHealthAvailability    = "Microsoft.ResourceNotifications.HealthResources.AvailabilityStatusChanged"
	TypeHealthAnnotated       = "Microsoft.ResourceNotifications.HealthResources.ResourceAnnotated"
)

// VMResourceType is the ARM type of a virtual machine.
const VMResourceType = "Microsoft.Compute/virtualMachines"

// Errors of FromEvent.
var (
	// ErrIgnored: the event is not about a virtual machine, or says nothing
	// Vigil acts on. It is not a failure.
	ErrIgnored = errors.New("event ignored")
	// ErrMalformed: the event claims to be about a VM but cannot be read.
	ErrMalformed = errors.New("malformed Azure event")
)

// Change is what an Azure event says happened to one VM.
type Change struct {
	VM            VMID
	Kind          events.LifecycleKind // empty for a write (see Write) or when nothing changed (see Lifecycle)
	Write         bool                 // created or updated: which one depends on what is known
	Lifecycle     bool                 // publish a lifecycle event
	Enrich        bool                 // re-read the VM from ARM
	LiveMigration bool                 // a health annotation reports a live migration
	Operation     string
	Outcome       string // Succeeded, Failed, Canceled
	CorrelationID string
	Annotation    string
	EventID       string
	EventType     string
	OccurredAt    time.Time
}

// FromEvent normalises one Azure event.
func FromEvent(ev eventgrid.Event) (Change, error) {
	c := Change{EventID: ev.ID, EventType: ev.Type, OccurredAt: ev.Time}
	var err error
	switch ev.Type {
	case TypeWriteSuccess, TypeDeleteSuccess, TypeActionSuccess,
		TypeWriteFailure, TypeDeleteFailure, TypeActionFailure,
		TypeWriteCancel, TypeDeleteCancel, TypeActionCancel:
		err = fromResourceEvent(ev, &c)
	case TypeNotifCreatedOrUpdated, TypeNotifDeleted:
		err = fromNotification(ev, &c)
	case TypeHealthAvailability, TypeHealthAnnotated:
		err = fromHealth(ev, &c)
	default:
		return c, fmt.Errorf("%w: type %q", ErrIgnored, ev.Type)
	}
	if err != nil {
		return c, err
	}
	if c.OccurredAt.IsZero() {
		return c, fmt.Errorf("%w: event %s has no time", ErrMalformed, ev.ID)
	}
	return c, nil
}

// resourceData is the data of Microsoft.Resources.Resource* events. Only
// what is used is declared; "authorization", "claims" and "httpRequest"
// vary too much to be typed and are ignored.
type resourceData struct {
	ResourceURI      lenient `json:"resourceUri"`
	OperationName    lenient `json:"operationName"`
	Status           lenient `json:"status"`
	SubscriptionID   lenient `json:"subscriptionId"`
	CorrelationID    lenient `json:"correlationId"`
	ResourceProvider lenient `json:"resourceProvider"`
}

func fromResourceEvent(ev eventgrid.Event, c *Change) error {
	var d resourceData
	if err := unmarshalObject(ev.Data, &d); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrMalformed, ev.Type, err)
	}
	uri := string(d.ResourceURI)
	if uri == "" {
		uri = ev.Subject
	}
	vm, child, err := ParseVMID(uri)
	if err != nil {
		return err
	}
	c.VM = vm
	c.Operation = string(d.OperationName)
	c.CorrelationID = string(d.CorrelationID)
	switch {
	case strings.HasSuffix(ev.Type, "Success"):
		c.Outcome = "Succeeded"
	case strings.HasSuffix(ev.Type, "Failure"):
		c.Outcome = "Failed"
	default:
		c.Outcome = "Canceled"
	}
	if c.Outcome != "Succeeded" {
		// Nothing is known to have changed; the VM is re-read so that the
		// inventory shows where it ended up.
		c.Enrich = true
		return nil
	}
	op := strings.ToLower(c.Operation)
	prefix := strings.ToLower(VMResourceType) + "/"
	if !strings.HasPrefix(op, prefix) {
		if child != "" || op == "" {
			// A write or delete of a child resource reported under its own
			// operation, or an event without an operation: re-read the VM.
			return markUpdated(c, ev.Type == TypeDeleteSuccess && child == "")
		}
		return fmt.Errorf("%w: operation %q on a VM", ErrIgnored, c.Operation)
	}
	switch strings.TrimPrefix(op, prefix) {
	case "write":
		c.Write, c.Lifecycle, c.Enrich = true, true, true
	case "delete":
		c.Kind, c.Lifecycle = events.LifecycleDeleted, true
	case "start/action":
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleStarted, true, true
	case "restart/action", "redeploy/action", "reimage/action", "performmaintenance/action":
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleRestarted, true, true
	case "poweroff/action":
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleStopped, true, true
	case "deallocate/action":
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleDeallocated, true, true
	case "reapply/action", "generalize/action", "converttomanageddisks/action",
		"attachdetachdatadisks/action", "migratetovirtualmachinescaleset/action",
		"simulateeviction/action", "extensions/write", "extensions/delete":
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleUpdated, true, true
	default:
		return fmt.Errorf("%w: operation %q changes nothing Vigil tracks", ErrIgnored, c.Operation)
	}
	return nil
}

func markUpdated(c *Change, deleted bool) error {
	if deleted {
		c.Kind, c.Lifecycle = events.LifecycleDeleted, true
		return nil
	}
	c.Kind, c.Lifecycle, c.Enrich = events.LifecycleUpdated, true, true
	return nil
}

// notificationData is the data of Azure Resource Notifications events.
type notificationData struct {
	ResourceInfo struct {
		ID         lenient         `json:"id"`
		Name       lenient         `json:"name"`
		Type       lenient         `json:"type"`
		Properties json.RawMessage `json:"properties"`
	} `json:"resourceInfo"`
	OperationalInfo struct {
		ResourceEventTime lenient `json:"resourceEventTime"`
	} `json:"operationalInfo"`
	APIVersion lenient `json:"apiVersion"`
}

func fromNotification(ev eventgrid.Event, c *Change) error {
	var d notificationData
	if err := unmarshalObject(ev.Data, &d); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrMalformed, ev.Type, err)
	}
	id := string(d.ResourceInfo.ID)
	if id == "" {
		id = ev.Subject
	}
	vm, child, err := ParseVMID(id)
	if err != nil {
		return err
	}
	c.VM, c.Outcome = vm, "Succeeded"
	if t := eventTime(d.OperationalInfo.ResourceEventTime); !t.IsZero() {
		c.OccurredAt = t
	}
	if child != "" {
		return markUpdated(c, false)
	}
	if ev.Type == TypeNotifDeleted {
		c.Kind, c.Lifecycle, c.Operation = events.LifecycleDeleted, true, VMResourceType+"/delete"
		return nil
	}
	c.Write, c.Lifecycle, c.Enrich, c.Operation = true, true, true, VMResourceType+"/write"
	return nil
}

type healthData struct {
	ResourceInfo struct {
		ID         lenient `json:"id"`
		Properties struct {
			TargetResourceID          lenient `json:"targetResourceId"`
			TargetResourceType        lenient `json:"targetResourceType"`
			OccurredTime              lenient `json:"occurredTime"`
			AvailabilityState         lenient `json:"availabilityState"`
			PreviousAvailabilityState lenient `json:"previousAvailabilityState"`
			AnnotationName            lenient `json:"annotationName"`
			Summary                   lenient `json:"summary"`
			Reason                    lenient `json:"reason"`
		} `json:"properties"`
	} `json:"resourceInfo"`
	OperationalInfo struct {
		ResourceEventTime lenient `json:"resourceEventTime"`
	} `json:"operationalInfo"`
}

func fromHealth(ev eventgrid.Event, c *Change) error {
	var d healthData
	if err := unmarshalObject(ev.Data, &d); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrMalformed, ev.Type, err)
	}
	p := d.ResourceInfo.Properties
	id := string(p.TargetResourceID)
	if id == "" {
		// The health resource is a child of the VM:
		// <vm>/providers/Microsoft.ResourceHealth/availabilityStatuses/current.
		id = string(d.ResourceInfo.ID)
		if id == "" {
			id = ev.Subject
		}
		if i := strings.Index(strings.ToLower(id), "/providers/microsoft.resourcehealth/"); i > 0 {
			id = id[:i]
		}
	}
	vm, _, err := ParseVMID(id)
	if err != nil {
		return err
	}
	c.VM, c.Outcome = vm, "Succeeded"
	if t := eventTime(p.OccurredTime); !t.IsZero() {
		c.OccurredAt = t
	} else if t := eventTime(d.OperationalInfo.ResourceEventTime); !t.IsZero() {
		c.OccurredAt = t
	}
	if ev.Type == TypeHealthAvailability {
		state := string(p.AvailabilityState)
		c.Operation = "availability:" + state
		switch strings.ToLower(state) {
		case "available":
			c.Kind, c.Lifecycle = events.LifecycleAvailable, true
		case "unavailable", "degraded":
			c.Kind, c.Lifecycle, c.Enrich = events.LifecycleUnavailable, true, true
		default:
			return fmt.Errorf("%w: availability state %q", ErrIgnored, state)
		}
		return nil
	}
	name := string(p.AnnotationName)
	c.Annotation = name
	c.Operation = "annotation:" + name
	lower := strings.ToLower(name)
	switch {
	case strings.Contains(lower, "livemigration"):
		c.LiveMigration = true
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleUpdated, true, true
	case strings.Contains(lower, "reboot"), strings.Contains(lower, "restart"),
		strings.Contains(lower, "redeploy"), strings.Contains(lower, "servicehealing"):
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleRestarted, true, true
	default:
		c.Kind, c.Lifecycle, c.Enrich = events.LifecycleUpdated, true, true
	}
	return nil
}

func eventTime(s lenient) time.Time {
	if s == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, string(s))
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}

func unmarshalObject(data []byte, v any) error {
	b := bytes.TrimSpace(data)
	if len(b) == 0 || b[0] != '{' {
		return errors.New("data is not a JSON object")
	}
	return json.Unmarshal(b, v)
}

// lenient is a string attribute that Azure sometimes sends as another JSON
// type: a number or boolean becomes its text, an object its "value" member
// (as in {"value": "...", "localizedValue": "..."}), anything else "".
type lenient string

func (l *lenient) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return nil
	}
	switch b[0] {
	case '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*l = lenient(s)
	case '{':
		var o struct {
			Value lenient `json:"value"`
		}
		if err := json.Unmarshal(b, &o); err != nil {
			return err
		}
		*l = o.Value
	case '[', 'n':
		*l = ""
	default:
		*l = lenient(b)
	}
	return nil
}
