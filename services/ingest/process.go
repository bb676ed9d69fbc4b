package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/ingest/arm"
	"github.com/vigil-cc/vigil/services/ingest/compliance"
	"github.com/vigil-cc/vigil/services/ingest/normalize"
)

// processor turns stored raw events into lifecycle events, jobs and
// inventory updates, and applies enrichment results.
type processor struct {
	conn   *bus.Conn
	inv    *inventory
	enrich func(ctx context.Context, vm normalize.VMID, asOf time.Time) // nil without ARM
	policy compliance.Policy
	log    *slog.Logger
	m      *metrics
	now    func() time.Time
	// skew bounds event times (eventgrid.CheckTime): an event dated
	// further ahead is not applied.
	skew time.Duration
}

// superseded reports whether the record already reflects an event at least
// as new as ch (or ch itself).
func superseded(vm events.VM, ch normalize.Change) bool {
	return ch.OccurredAt.Before(vm.EventTime) || (ch.OccurredAt.Equal(vm.EventTime) && ch.EventID == vm.EventID)
}

// applyChange publishes the lifecycle event (and a job) for ch, then
// records it in the inventory by compare and set. The lifecycle event's id
// is derived from the Azure event id, so repeating this after a crash
// stores nothing twice; the inventory is written last, so a recorded
// change always has its lifecycle event.
func (p *processor) applyChange(ctx context.Context, ch normalize.Change, origin string) error {
	if !ch.Lifecycle {
		p.m.normalized(ctx, origin, "enrich_only")
		p.requestEnrich(ctx, ch.VM, ch.OccurredAt)
		return nil
	}
	key := ch.VM.Key()
	for range maxCASAttempts {
		rec, err := p.inv.get(ctx, key)
		if err != nil {
			return err
		}
		if rec.exists() && superseded(rec.VM, ch) {
			// Older than what is known: it changes no state (no inventory
			// update, no job), but it happened, so it is published for the
			// record, marked superseded.
			p.m.normalized(ctx, origin, "superseded")
			p.log.DebugContext(ctx, "event older than the inventory; recorded, not applied", "vm", ch.VM.ResourceID,
				"event_id", ch.EventID, "event_time", ch.OccurredAt, "inventory_time", rec.VM.EventTime)
			kind := ch.Kind
			if ch.Write {
				kind = events.LifecycleUpdated
			}
			return p.publishLifecycle(ctx, LifecycleID(ch.EventID), events.Lifecycle{
				VMKey: key, ResourceID: ch.VM.ResourceID, VMID: rec.VM.VMID, Kind: kind,
				Subscription: ch.VM.Subscription, ResourceGroup: ch.VM.ResourceGroup, Name: ch.VM.Name,
				Operation: ch.Operation, Outcome: ch.Outcome, Origin: origin,
				AzureEventID: ch.EventID, CorrelationID: ch.CorrelationID, OccurredAt: ch.OccurredAt,
				Superseded: true,
			})
		}
		kind := ch.Kind
		if ch.Write {
			kind = events.LifecycleUpdated
			if !rec.exists() || rec.VM.Deleted {
				kind = events.LifecycleCreated
			}
		}
		vm := nextRecord(rec, ch.VM, kind, ch.OccurredAt, ch.EventID, p.now())
		if ch.LiveMigration && ch.OccurredAt.After(vm.LiveMigratedAt) {
			vm.LiveMigratedAt = ch.OccurredAt
		}
		repeatDelete := kind == events.LifecycleDeleted && rec.exists() && rec.VM.Deleted
		if !repeatDelete {
			lc := events.Lifecycle{
				VMKey: key, ResourceID: ch.VM.ResourceID, VMID: rec.VM.VMID, Kind: kind,
				Subscription: ch.VM.Subscription, ResourceGroup: ch.VM.ResourceGroup, Name: ch.VM.Name,
				Operation: ch.Operation, Outcome: ch.Outcome, Origin: origin,
				AzureEventID: ch.EventID, CorrelationID: ch.CorrelationID, OccurredAt: ch.OccurredAt,
			}
			if err := p.publishLifecycle(ctx, LifecycleID(ch.EventID), lc); err != nil {
				return err
			}
			if err := p.job(ctx, vm, kind, string(kind)); err != nil {
				return err
			}
		}
		if _, err := p.inv.put(ctx, key, vm, rec.Rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return err
		}
		p.m.normalized(ctx, origin, "applied")
		if ch.Enrich && kind != events.LifecycleDeleted {
			p.requestEnrich(ctx, ch.VM, ch.OccurredAt)
		}
		return nil
	}
	return fmt.Errorf("inventory %s: %w %d times", key, errConflict, maxCASAttempts)
}

// nextRecord is rec after a lifecycle change of kind at t.
func nextRecord(rec record, id normalize.VMID, kind events.LifecycleKind, t time.Time, eventID string, now time.Time) events.VM {
	vm := rec.VM
	if !rec.exists() {
		vm = events.VM{VMKey: id.Key(), ResourceID: id.ResourceID, Subscription: id.Subscription,
			ResourceGroup: id.ResourceGroup, Name: id.Name}
	}
	vm.Lifecycle, vm.EventTime, vm.EventID, vm.UpdatedAt = kind, t, eventID, now.UTC()
	switch kind {
	case events.LifecycleDeleted:
		vm.Deleted = true
		vm.PowerState = "deleted"
	case events.LifecycleCreated:
		vm.Deleted = false
		vm.PowerState = ""
		vm.EnrichedAt = time.Time{}
		// A VM created again under the same name has tags of its own.
		vm.Tags, vm.TagsAt = nil, time.Time{}
	case events.LifecycleStarted, events.LifecycleRestarted:
		vm.Deleted = false
		vm.PowerState = "running"
	case events.LifecycleStopped:
		vm.PowerState = "stopped"
	case events.LifecycleDeallocated:
		vm.PowerState = "deallocated"
	}
	return vm
}

func (p *processor) publishLifecycle(ctx context.Context, id string, lc events.Lifecycle) error {
	env, err := events.New(events.TypeLifecycle, ServiceName+"/"+lc.Origin, events.LifecycleSubject(lc.VMKey), lc)
	if err != nil {
		return err
	}
	env.ID, env.Time = id, lc.OccurredAt.UTC()
	if _, err := p.conn.Publish(ctx, events.LifecycleSubject(lc.VMKey), env); err != nil {
		return err
	}
	p.m.lifecycle(ctx, string(lc.Kind), lc.Origin)
	return nil
}

// job enqueues an attestation job for the kinds that need one now:
// created, started and restarted.
func (p *processor) job(ctx context.Context, vm events.VM, kind events.LifecycleKind, reason string) error {
	switch kind {
	case events.LifecycleCreated, events.LifecycleStarted, events.LifecycleRestarted:
	default:
		return nil
	}
	absorbed, err := p.conn.PublishJob(ctx, ServiceName, events.Job{
		VMKey: vm.VMKey, ResourceID: vm.ResourceID, VMID: vm.VMID, Reason: reason, RequestedAt: p.now().UTC(),
	})
	if err != nil {
		return fmt.Errorf("publish job for %s: %w", vm.ResourceID, err)
	}
	p.m.jobs(ctx, reason, absorbed)
	return nil
}

func (p *processor) requestEnrich(ctx context.Context, vm normalize.VMID, asOf time.Time) {
	if p.enrich != nil {
		p.enrich(ctx, vm, asOf)
	}
}

// heal publishes a lifecycle event that reconciliation (or an ARM 404)
// found missing, and records it. stillNeeded re-checks the freshly read
// record before anything is published, so that concurrent events and other
// replicas win. The lifecycle id is derived from the VM, the kind and the
// record revision it corrects: replicas healing the same state publish the
// same event, which JetStream stores once.
func (p *processor) heal(ctx context.Context, id normalize.VMID, kind events.LifecycleKind, at time.Time, op string,
	stillNeeded func(record) bool, update func(*events.VM)) error {
	key := id.Key()
	for range maxCASAttempts {
		rec, err := p.inv.get(ctx, key)
		if err != nil {
			return err
		}
		if !stillNeeded(rec) {
			return nil
		}
		eid := derivedID(OriginReconcile, key, string(kind), fmt.Sprint(rec.Rev))
		vm := nextRecord(rec, id, kind, at, eid, p.now())
		if update != nil {
			update(&vm)
		}
		lc := events.Lifecycle{
			VMKey: key, ResourceID: vm.ResourceID, VMID: vm.VMID, Kind: kind,
			Subscription: id.Subscription, ResourceGroup: id.ResourceGroup, Name: id.Name,
			Operation: op, Outcome: "Succeeded", Origin: OriginReconcile, OccurredAt: at,
		}
		if err := p.publishLifecycle(ctx, eid, lc); err != nil {
			return err
		}
		if err := p.job(ctx, vm, kind, OriginReconcile); err != nil {
			return err
		}
		if _, err := p.inv.put(ctx, key, vm, rec.Rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return err
		}
		p.log.InfoContext(ctx, "reconciled a missed change", "vm", id.ResourceID, "kind", kind, "operation", op)
		return nil
	}
	return fmt.Errorf("inventory %s: %w %d times", key, errConflict, maxCASAttempts)
}

// applyEnrichment stores what ARM said about a VM and publishes its
// configuration findings when they changed.
func (p *processor) applyEnrichment(ctx context.Context, r arm.Result) error {
	if r.NotFound {
		return p.heal(ctx, r.VM, events.LifecycleDeleted, r.FetchedAt.UTC(), "arm.get:not_found",
			func(rec record) bool {
				// Gone from ARM, unless already deleted or changed after the read.
				return rec.exists() && !rec.VM.Deleted && rec.VM.EventTime.Before(r.FetchedAt)
			}, nil)
	}
	key := r.VM.Key()
	var tags map[string]string
	if r.Facts.VM != nil {
		tags = p.armTags(ctx, r.VM, r.Facts.VM.Tags)
	}
	for range maxCASAttempts {
		rec, err := p.inv.get(ctx, key)
		if err != nil {
			return err
		}
		if rec.exists() && rec.VM.Deleted {
			return nil // reconcile heals a VM that exists again
		}
		vm := rec.VM
		if !rec.exists() {
			vm = events.VM{VMKey: key, ResourceID: r.VM.ResourceID, Subscription: r.VM.Subscription,
				ResourceGroup: r.VM.ResourceGroup, Name: r.VM.Name}
		}
		facts := r.Facts
		facts.LiveMigration = !vm.LiveMigratedAt.IsZero()
		findings := compliance.Evaluate(facts, p.policy)
		prevVMID := vm.VMID
		describe(&vm, facts.VM)
		if facts.VM != nil && !r.FetchedAt.Before(vm.TagsAt) {
			vm.Tags, vm.TagsAt = tags, r.FetchedAt.UTC()
		}
		if state := arm.PowerState(facts.VM); state != "" && !vm.EventTime.After(r.FetchedAt) {
			vm.PowerState = state
		}
		changed := vm.EnrichedAt.IsZero() || prevVMID != vm.VMID || !slices.Equal(vm.Findings, findings)
		before := vm.Findings
		vm.Findings, vm.EnrichedAt, vm.UpdatedAt = findings, r.FetchedAt.UTC(), p.now().UTC()
		if changed {
			cfg := events.Config{VMKey: key, ResourceID: vm.ResourceID, VMID: vm.VMID,
				Compliant: compliance.Compliant(findings), Findings: findings, ObservedAt: r.FetchedAt.UTC()}
			if cfg.Findings == nil {
				cfg.Findings = []events.Finding{}
			}
			env, err := events.New(events.TypeConfig, ServiceName+"/arm", events.ConfigSubject(key), cfg)
			if err != nil {
				return err
			}
			env.ID = derivedID("config", key, fmt.Sprint(rec.Rev), r.FetchedAt.UTC().Format(time.RFC3339Nano))
			if _, err := p.conn.Publish(ctx, events.ConfigSubject(key), env); err != nil {
				return err
			}
			p.m.config(ctx, cfg.Compliant)
		}
		// The alerts go before the inventory records the findings, as the
		// config event does: were they published after, a failure between
		// the two would leave the findings recorded and their alerts never
		// raised (the read applied again finds nothing changed), a resolve
		// lost for good.
		if err := p.alertFindings(ctx, vm, before, findings, r.FetchedAt.UTC()); err != nil {
			return err
		}
		if _, err := p.inv.put(ctx, key, vm, rec.Rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("inventory %s: %w %d times", key, errConflict, maxCASAttempts)
}

// alertFindings raises an alert for each configuration finding a VM did
// not have before (firing, key <vm>/config.<code>) and resolves the
// alert of each finding it no longer has (config.fixed). Ids derive from
// the VM, the finding and the ARM read, so a read applied again (after a
// failure, or a compare-and-set conflict on the inventory) raises nothing
// twice.
func (p *processor) alertFindings(ctx context.Context, vm events.VM, before, after []events.Finding, at time.Time) error {
	has := func(fs []events.Finding, code string) bool {
		return slices.ContainsFunc(fs, func(f events.Finding) bool { return f.Code == code })
	}
	name := vm.Name
	if name == "" {
		name = vm.VMKey
	}
	var alerts []events.Alert
	for _, f := range after {
		if !has(before, f.Code) {
			alerts = append(alerts, events.Alert{Severity: f.Severity, Code: "config." + f.Code, VMKey: vm.VMKey, ResourceID: vm.ResourceID,
				Message: fmt.Sprintf("%s: %s", name, f.Message), Source: ServiceName, At: at,
				Key: events.AlertKey(vm.VMKey, "config."+f.Code), State: events.AlertFiring})
		}
	}
	for _, f := range before {
		if !has(after, f.Code) {
			alerts = append(alerts, events.Alert{Severity: events.SeverityInfo, Code: "config.fixed", VMKey: vm.VMKey, ResourceID: vm.ResourceID,
				Message: fmt.Sprintf("%s: fixed: %s", name, f.Message), Source: ServiceName, At: at,
				Key: events.AlertKey(vm.VMKey, "config."+f.Code), State: events.AlertResolved})
		}
	}
	for _, a := range alerts {
		id := derivedID("alert", a.Key, string(a.State), at.Format(time.RFC3339Nano))
		if err := p.conn.PublishAlert(ctx, ServiceName, id, a); err != nil {
			return err
		}
	}
	return nil
}

// armTags bounds the tags ARM showed for vm (normalize.Tags): ARM's data
// is outside input. What lies beyond Azure's bounds is dropped or trimmed,
// counted and logged; it never fails the VM.
func (p *processor) armTags(ctx context.Context, vm normalize.VMID, raw map[string]*string) map[string]string {
	tags, b := normalize.Tags(raw)
	if b.Any() {
		p.m.tagsBounded(ctx, b)
		p.log.WarnContext(ctx, "ARM showed tags beyond Azure's bounds; dropped or trimmed", "vm", vm.ResourceID, "tags", len(raw),
			"dropped_over_max", b.DroppedOverMax, "dropped_long_name", b.DroppedLongName,
			"dropped_invalid", b.DroppedInvalid, "trimmed_value", b.TrimmedValues)
	}
	return tags
}

// fromList records what ARM's list, read at at, shows of a VM the
// inventory has: its tags, unless a read that started later recorded
// them, and its vmId when the record has none yet (a VM's vmId never
// changes; a VM made again under the same name is a new record). Nothing
// else is taken from the list: the rest waits for the VM's enrichment.
// Neither is a lifecycle change: the record changes, nothing is published.
// rec is the record as the pass read it: the first compare-and-set is
// against its revision.
func (p *processor) fromList(ctx context.Context, id normalize.VMID, rec record, tags map[string]string, vmID string, at time.Time) error {
	key := id.Key()
	for i := range maxCASAttempts {
		if i > 0 {
			// rec was the pass's; after a conflict, read the record anew.
			var err error
			if rec, err = p.inv.get(ctx, key); err != nil {
				return err
			}
		}
		if !rec.exists() || rec.VM.Deleted {
			return nil
		}
		vm := rec.VM
		retag := vm.TagsAt.Before(at) && !maps.Equal(vm.Tags, tags)
		identify := vm.VMID == "" && vmID != ""
		if !retag && !identify {
			return nil
		}
		if retag {
			vm.Tags, vm.TagsAt = tags, at.UTC()
		}
		if identify {
			vm.VMID = vmID
			p.m.listedVMID(ctx)
		}
		vm.UpdatedAt = p.now().UTC()
		if _, err := p.inv.put(ctx, key, vm, rec.Rev); errors.Is(err, errConflict) {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
	return fmt.Errorf("inventory %s: %w %d times", key, errConflict, maxCASAttempts)
}

// describe copies what the inventory keeps from the ARM model.
func describe(vm *events.VM, m *armcompute.VirtualMachine) {
	if m == nil {
		return
	}
	if m.Location != nil {
		vm.Location = *m.Location
	}
	p := m.Properties
	if p == nil {
		return
	}
	if p.VMID != nil {
		vm.VMID = *p.VMID
	}
	if p.HardwareProfile != nil && p.HardwareProfile.VMSize != nil {
		vm.Size = string(*p.HardwareProfile.VMSize)
		vm.Platform = compliance.Platform(vm.Size)
	}
	vm.SecurityType = ""
	if p.SecurityProfile != nil && p.SecurityProfile.SecurityType != nil {
		vm.SecurityType = string(*p.SecurityProfile.SecurityType)
	}
	if p.StorageProfile != nil && p.StorageProfile.ImageReference != nil {
		ref := p.StorageProfile.ImageReference
		switch {
		case ref.Publisher != nil:
			vm.OSImage = deref(ref.Publisher) + ":" + deref(ref.Offer) + ":" + deref(ref.SKU)
		case ref.ID != nil:
			vm.OSImage = *ref.ID
		case ref.SharedGalleryImageID != nil:
			vm.OSImage = *ref.SharedGalleryImageID
		case ref.CommunityGalleryImageID != nil:
			vm.OSImage = *ref.CommunityGalleryImageID
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
