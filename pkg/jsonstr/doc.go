// Package jsonstr reads and writes JSON string literals (RFC 8259 section
// 7) for Vigil's hand-written JSON fast paths: the evidence bundle decoder
// (pkg/evidence), ingest's Event Grid parser and the auditor's RFC 8785
// canonicalizer. Which escapes a literal may hold, how they decode, and
// what happens to invalid UTF-8 and unpaired UTF-16 surrogates are defined
// here once, and checked against encoding/json here (see the tests) as
// well as by each fast path's differential fuzz test.
package jsonstr
