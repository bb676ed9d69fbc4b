// Package nsfake is an Event Grid namespace for tests: an httptest TLS
// server speaking the namespace data-plane REST shapes (api-version
// 2024-06-01) of receive, acknowledge, release, reject and renewLock, with
// lock tokens, delivery counts and a dead-letter list.
package nsfake

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Key is the access key the fake accepts.
const Key = "nsfake-access-key"

type event struct {
	raw       json.RawMessage
	state     string // available, locked, acked, rejected
	token     string
	delivered int
	visibleAt time.Time
}

// Namespace is the fake.
type Namespace struct {
	Server *httptest.Server
	Topic  string
	Sub    string

	mu       sync.Mutex
	events   []*event
	tokens   int
	Releases []string // releaseDelayInSeconds of every release call
	Renewals int
	Acks     int
}

// New starts a fake namespace with one topic and event subscription.
func New(t testing.TB) *Namespace {
	n := &Namespace{Topic: "vm-events", Sub: "vigil"}
	n.Server = httptest.NewTLSServer(http.HandlerFunc(n.serve))
	t.Cleanup(n.Server.Close)
	return n
}

// Publish queues events (raw JSON objects, as the service would hold them).
func (n *Namespace) Publish(evs ...string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, e := range evs {
		n.events = append(n.events, &event{raw: json.RawMessage(e), state: "available"})
	}
}

// Count returns how many events are in state (available, locked, acked,
// rejected).
func (n *Namespace) Count(state string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	c := 0
	for _, e := range n.events {
		if e.state == state {
			c++
		}
	}
	return c
}

// MakeVisible ends every release delay (instead of waiting for it).
func (n *Namespace) MakeVisible() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, e := range n.events {
		e.visibleAt = time.Time{}
	}
}

type lockTokens struct {
	LockTokens []string `json:"lockTokens"`
}

type failed struct {
	LockToken string `json:"lockToken"`
	Error     struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

type settleResult struct {
	Succeeded []string `json:"succeededLockTokens"`
	Failed    []failed `json:"failedLockTokens"`
}

func (n *Namespace) serve(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "SharedAccessKey "+Key {
		http.Error(w, `{"error":{"code":"Unauthorized","message":"bad key"}}`, http.StatusUnauthorized)
		return
	}
	if r.URL.Query().Get("api-version") != "2024-06-01" {
		http.Error(w, `{"error":{"code":"BadRequest","message":"api-version"}}`, http.StatusBadRequest)
		return
	}
	prefix := "/topics/" + n.Topic + "/eventsubscriptions/" + n.Sub + ":"
	if r.Method != http.MethodPost || !strings.HasPrefix(r.URL.Path, prefix) {
		http.Error(w, `{"error":{"code":"NotFound","message":"no such topic or subscription"}}`, http.StatusNotFound)
		return
	}
	op := strings.TrimPrefix(r.URL.Path, prefix)
	w.Header().Set("Content-Type", "application/json")
	if op == "receive" {
		n.receive(w, r)
		return
	}
	var req lockTokens
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, `{"error":{"code":"BadRequest","message":"body"}}`, http.StatusBadRequest)
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var res settleResult
	for _, tok := range req.LockTokens {
		e := n.byToken(tok)
		if e == nil {
			f := failed{LockToken: tok}
			f.Error.Code, f.Error.Message = "TokenLost", "lock token not found or expired"
			res.Failed = append(res.Failed, f)
			continue
		}
		switch op {
		case "acknowledge":
			e.state, e.token = "acked", ""
			n.Acks++
		case "reject":
			e.state, e.token = "rejected", ""
		case "release":
			delay, _ := strconv.Atoi(r.URL.Query().Get("releaseDelayInSeconds"))
			e.state, e.token, e.visibleAt = "available", "", time.Now().Add(time.Duration(delay)*time.Second)
		case "renewLock":
		default:
			http.Error(w, `{"error":{"code":"NotFound","message":"operation"}}`, http.StatusNotFound)
			return
		}
		res.Succeeded = append(res.Succeeded, tok)
	}
	switch op {
	case "release":
		n.Releases = append(n.Releases, r.URL.Query().Get("releaseDelayInSeconds"))
	case "renewLock":
		n.Renewals++
	}
	if res.Succeeded == nil {
		res.Succeeded = []string{}
	}
	if res.Failed == nil {
		res.Failed = []failed{}
	}
	_ = json.NewEncoder(w).Encode(res)
}

func (n *Namespace) byToken(tok string) *event {
	for _, e := range n.events {
		if e.state == "locked" && e.token == tok {
			return e
		}
	}
	return nil
}

func (n *Namespace) receive(w http.ResponseWriter, r *http.Request) {
	max, _ := strconv.Atoi(r.URL.Query().Get("maxEvents"))
	if max <= 0 {
		max = 1
	}
	// Wait briefly for events instead of the full maxWaitTime.
	deadline := time.Now().Add(200 * time.Millisecond)
	type detail struct {
		BrokerProperties struct {
			LockToken     string `json:"lockToken"`
			DeliveryCount int    `json:"deliveryCount"`
		} `json:"brokerProperties"`
		Event json.RawMessage `json:"event"`
	}
	var out []detail
	for {
		n.mu.Lock()
		now := time.Now()
		for _, e := range n.events {
			if len(out) == max {
				break
			}
			if e.state != "available" || e.visibleAt.After(now) {
				continue
			}
			n.tokens++
			e.state, e.token = "locked", fmt.Sprintf("lock-%d", n.tokens)
			e.delivered++
			var d detail
			d.BrokerProperties.LockToken, d.BrokerProperties.DeliveryCount = e.token, e.delivered
			d.Event = e.raw
			out = append(out, d)
		}
		n.mu.Unlock()
		if len(out) > 0 || time.Now().After(deadline) || r.Context().Err() != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if out == nil {
		out = []detail{}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"value": out})
}
