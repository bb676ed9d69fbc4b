// Package console serves Vigil's read-only fleet console in the browser:
// the fleet's attestation state, live (issue 17; being built).
package console
