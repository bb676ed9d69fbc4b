// Package bus connects Vigil services to NATS JetStream: connecting with
// reconnect and drain, publishing envelopes with de-duplication ids and trace
// context, a pull-consumer runner that acks only after its handler succeeded,
// and request/reply helpers with deadlines.
package bus
