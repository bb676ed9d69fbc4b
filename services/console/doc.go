// Package console serves Vigil's read-only fleet console in the browser
// (docs/console.md): a fleet overview with server-drawn SVG charts, the VM
// table (filter, sort, server-side paging), each VM's timeline with its
// events' audit-log inclusion proofs, the alert feed and the audit log's
// verification. Pages are rendered on the server with html/template from
// an in-memory index fed by KV watches and stream consumers, never a scan
// per request; they update in place by Server-Sent Events from the
// console's own bus subscriptions. The browser never talks to NATS.
package console
