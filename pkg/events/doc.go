// Package events is Vigil's bus contract: the CloudEvents envelope, the
// versioned payload types, the VM key, subject builders and the JetStream
// stream and KV bucket definitions (docs/design.md §2-§7).
//
// Everything here is relied on by other services, tools and users: extend it
// with new optional fields and new subjects, never rename.
package events
