package azurekv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// DefaultVMIDClaim is the attestation token claim carrying the VM's vmId.
const DefaultVMIDClaim = "x-ms-azurevm-vmid"

// MaxPolicySize bounds a release policy keyguard is willing to rewrite.
const MaxPolicySize = 64 << 10

// ErrPolicyNotRewritable is matched by errors.Is when a release policy
// cannot be rewritten safely (unknown fields, bad shape): the key is then
// disabled instead.
var ErrPolicyNotRewritable = errors.New("azurekv: release policy cannot be rewritten")

// Policy is a secure key release policy (Azure Key Vault policy grammar):
// an anyOf of authorities, each with allOf or anyOf conditions.
type Policy struct {
	Version string      `json:"version"`
	AnyOf   []Authority `json:"anyOf"`
}

// Authority is one attestation authority and the conditions on its token.
type Authority struct {
	Authority string      `json:"authority"`
	AllOf     []Condition `json:"allOf,omitempty"`
	AnyOf     []Condition `json:"anyOf,omitempty"`
}

// Condition is a claim condition or a nested allOf/anyOf.
type Condition struct {
	Claim           string           `json:"claim,omitempty"`
	Equals          *json.RawMessage `json:"equals,omitempty"`
	NotEquals       *json.RawMessage `json:"notEquals,omitempty"`
	Less            *json.RawMessage `json:"less,omitempty"`
	LessOrEquals    *json.RawMessage `json:"lessOrEquals,omitempty"`
	Greater         *json.RawMessage `json:"greater,omitempty"`
	GreaterOrEquals *json.RawMessage `json:"greaterOrEquals,omitempty"`
	Exists          *json.RawMessage `json:"exists,omitempty"`
	AllOf           []Condition      `json:"allOf,omitempty"`
	AnyOf           []Condition      `json:"anyOf,omitempty"`
}

// ParsePolicy decodes a release policy strictly: a field keyguard does not
// know could change the meaning of a rewritten policy, so it is an error
// (matching ErrPolicyNotRewritable).
func ParsePolicy(b []byte) (*Policy, error) {
	if len(b) > MaxPolicySize {
		return nil, fmt.Errorf("%w: %d bytes, over the limit of %d", ErrPolicyNotRewritable, len(b), MaxPolicySize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p Policy
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPolicyNotRewritable, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data", ErrPolicyNotRewritable)
	}
	if len(p.AnyOf) == 0 {
		return nil, fmt.Errorf("%w: no authority", ErrPolicyNotRewritable)
	}
	for i, a := range p.AnyOf {
		if (len(a.AllOf) == 0) == (len(a.AnyOf) == 0) {
			return nil, fmt.Errorf("%w: authority %d needs exactly one of allOf and anyOf", ErrPolicyNotRewritable, i)
		}
		for _, c := range append(append([]Condition(nil), a.AllOf...), a.AnyOf...) {
			if err := c.check(0); err != nil {
				return nil, fmt.Errorf("%w: authority %d: %w", ErrPolicyNotRewritable, i, err)
			}
		}
	}
	return &p, nil
}

func (c Condition) check(depth int) error {
	if depth > 16 {
		return errors.New("conditions nested too deep")
	}
	ops := 0
	for _, v := range []*json.RawMessage{c.Equals, c.NotEquals, c.Less, c.LessOrEquals, c.Greater, c.GreaterOrEquals, c.Exists} {
		if v != nil {
			ops++
		}
	}
	switch {
	case c.Claim != "":
		if ops != 1 || c.AllOf != nil || c.AnyOf != nil {
			return fmt.Errorf("claim %q needs exactly one operator", c.Claim)
		}
	case c.AllOf != nil && c.AnyOf == nil && ops == 0:
		for _, s := range c.AllOf {
			if err := s.check(depth + 1); err != nil {
				return err
			}
		}
	case c.AnyOf != nil && c.AllOf == nil && ops == 0:
		for _, s := range c.AnyOf {
			if err := s.check(depth + 1); err != nil {
				return err
			}
		}
	default:
		return errors.New("condition is neither a claim condition nor an allOf or anyOf")
	}
	return nil
}

// Marshal encodes the policy.
func (p *Policy) Marshal() ([]byte, error) { return json.Marshal(p) }

// vmidForms are the spellings of a vmId a token may carry: Azure reports
// vmIds in upper case in the runtime data and in lower case in ARM.
func vmidForms(vmid string) []string {
	up, low := strings.ToUpper(vmid), strings.ToLower(vmid)
	if up == low {
		return []string{up}
	}
	return []string{up, low}
}

func exclusion(claim, vmid string) Condition {
	v := json.RawMessage(mustJSON(vmid))
	return Condition{Claim: claim, NotEquals: &v}
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}

// isNotEquals reports whether c is exactly the condition claim notEquals
// value, as Exclude adds it.
func isNotEquals(c Condition, claim, value string) bool {
	if c.Claim != claim || c.NotEquals == nil || c.Equals != nil || c.Less != nil || c.LessOrEquals != nil ||
		c.Greater != nil || c.GreaterOrEquals != nil || c.Exists != nil || c.AllOf != nil || c.AnyOf != nil {
		return false
	}
	var s string
	return json.Unmarshal(*c.NotEquals, &s) == nil && s == value
}

// Exclude rewrites p so that no token whose claim equals vmid (in upper or
// lower case) satisfies it: every authority gets, in its allOf, the
// conditions claim notEquals vmid; an authority with anyOf conditions is
// wrapped as allOf [anyOf [...], exclusions]. It reports whether p changed
// (false when vmid was excluded already).
func (p *Policy) Exclude(claim, vmid string) bool {
	changed := false
	for i := range p.AnyOf {
		a := &p.AnyOf[i]
		if len(a.AnyOf) > 0 {
			a.AllOf = []Condition{{AnyOf: a.AnyOf}}
			a.AnyOf = nil
			changed = true
		}
		for _, f := range vmidForms(vmid) {
			have := false
			for _, c := range a.AllOf {
				have = have || isNotEquals(c, claim, f)
			}
			if !have {
				a.AllOf = append(a.AllOf, exclusion(claim, f))
				changed = true
			}
		}
	}
	return changed
}

// Unexclude removes the exclusions Exclude added for vmid and unwraps an
// anyOf authority it wrapped. It reports whether p changed.
func (p *Policy) Unexclude(claim, vmid string) bool {
	changed := false
	forms := vmidForms(vmid)
	for i := range p.AnyOf {
		a := &p.AnyOf[i]
		kept := make([]Condition, 0, len(a.AllOf))
		for _, c := range a.AllOf {
			if isNotEquals(c, claim, forms[0]) || len(forms) > 1 && isNotEquals(c, claim, forms[1]) {
				continue
			}
			kept = append(kept, c)
		}
		if len(kept) == len(a.AllOf) {
			continue
		}
		changed = true
		a.AllOf = kept
		if len(kept) == 1 && kept[0].Claim == "" && kept[0].AllOf == nil && len(kept[0].AnyOf) > 0 {
			a.AnyOf, a.AllOf = kept[0].AnyOf, nil
		}
	}
	return changed
}

// Excludes reports whether no token whose claim equals vmid, in either
// spelling, can satisfy p, judging only by equals and notEquals conditions
// on claim (any other condition is assumed satisfiable).
func (p *Policy) Excludes(claim, vmid string) bool {
	if len(p.AnyOf) == 0 {
		return false
	}
	for _, v := range vmidForms(vmid) {
		for _, a := range p.AnyOf {
			if !conditionsExclude(a.AllOf, a.AnyOf, claim, v) {
				return false
			}
		}
	}
	return true
}

// conditionsExclude reports whether a token whose claim is value fails
// allOf (when set) or anyOf.
func conditionsExclude(allOf, anyOf []Condition, claim, value string) bool {
	if len(allOf) > 0 {
		for _, c := range allOf {
			if conditionExcludes(c, claim, value) {
				return true
			}
		}
		return false
	}
	if len(anyOf) > 0 {
		for _, c := range anyOf {
			if !conditionExcludes(c, claim, value) {
				return false
			}
		}
		return true
	}
	return false
}

func conditionExcludes(c Condition, claim, value string) bool {
	switch {
	case c.Claim != "":
		return c.Claim == claim && claimFails(c, value)
	case c.AllOf != nil:
		return conditionsExclude(c.AllOf, nil, claim, value)
	case c.AnyOf != nil:
		return conditionsExclude(nil, c.AnyOf, claim, value)
	}
	return false
}

// claimFails reports whether value fails claim condition c (only equals and
// notEquals on strings are judged; anything else may pass).
func claimFails(c Condition, value string) bool {
	var s string
	switch {
	case c.Equals != nil:
		return json.Unmarshal(*c.Equals, &s) == nil && s != value
	case c.NotEquals != nil:
		return json.Unmarshal(*c.NotEquals, &s) == nil && s == value
	}
	return false
}
