package busauth

import "github.com/nats-io/nkeys"

// WithKey returns a copy of r that signs with kp instead of its
// revocation key: a revoker holding a key the operator does not trust.
func (r *Revoker) WithKey(kp nkeys.KeyPair) *Revoker {
	return &Revoker{key: kp, account: r.account, base: r.base, creds: r.creds, issued: r.issued}
}
