// Command composetest starts Vigil's real docker compose file and checks it
// from outside the containers, as a user would (make compose-test).
//
// No registry is needed: it builds every program of the compose file on
// the host (static binaries, nats-server from its Go module at the version
// the code is tested with) and test images FROM scratch with the same
// entry points, users and volume mount points as the real images, and
// starts the file with an override that only swaps image sources. It then
// checks that the fleet is attested, that the tamper scenario's VMs are
// revoked and alerted and no other VM is, that the webhook refuses
// unauthenticated deliveries, that the audit log in its volume verifies
// with vigil audit verify, and that down followed by up keeps the audit
// log and the NATS state (nothing lost, nothing duplicated). It prints one
// line and leaves no container, network, volume or image behind.
//
//	go run ./tools/composetest -f deploy/compose/compose.yaml
//	go run ./tools/composetest -f deploy/compose/compose.yaml -f deploy/compose/compose.cluster.yaml -cluster
package main
