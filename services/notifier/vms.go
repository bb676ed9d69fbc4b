package notifier

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// vmCacheTTL is how long a VM's inventory is reused.
const vmCacheTTL = 30 * time.Second

// vmCache reads the inventory (vigil-vms) of alerts' VMs, for filters on
// names, resource groups and tags and for the notifications' context.
type vmCache struct {
	js jetstream.JetStream
	mu sync.Mutex
	kv jetstream.KeyValue
	m  map[string]vmEntry
}

type vmEntry struct {
	vm *sink.VMInfo
	at time.Time
}

func newVMCache(js jetstream.JetStream) *vmCache { return &vmCache{js: js, m: map[string]vmEntry{}} }

// get returns the inventory of VM key, nil when unknown or unreadable.
func (c *vmCache) get(ctx context.Context, key string) *sink.VMInfo {
	if !events.ValidVMKey(key) {
		return nil
	}
	now := time.Now()
	c.mu.Lock()
	e, ok := c.m[key]
	kv := c.kv
	c.mu.Unlock()
	if ok && now.Sub(e.at) < vmCacheTTL {
		return e.vm
	}
	if kv == nil {
		var err error
		if kv, err = c.js.KeyValue(ctx, events.BucketVMs); err != nil {
			return nil
		}
	}
	var info *sink.VMInfo
	if ent, err := kv.Get(ctx, key); err == nil {
		var vm events.VM
		if json.Unmarshal(ent.Value(), &vm) == nil {
			info = &sink.VMInfo{Name: vm.Name, ResourceGroup: vm.ResourceGroup, Subscription: vm.Subscription, Platform: vm.Platform, Tags: vm.Tags}
		}
	}
	c.mu.Lock()
	c.kv = kv
	if len(c.m) > 100_000 {
		clear(c.m)
	}
	c.m[key] = vmEntry{vm: info, at: now}
	c.mu.Unlock()
	return info
}
