package main

import (
	"errors"
	"os"

	"github.com/spf13/pflag"
)

// natsFlags are the connection flags of every command that talks to NATS.
// Their environment fallbacks are the services' own (VIGIL_NATS_URL,
// VIGIL_NATS_CREDS, VIGIL_NATS_CA, VIGIL_NATS_CERT, VIGIL_NATS_KEY).
type natsFlags struct {
	server, creds, tlsCA, tlsCert, tlsKey string
}

func (n *natsFlags) register(f *pflag.FlagSet) {
	f.StringVar(&n.server, "server", flagEnv("VIGIL_NATS_URL", defaultNATSURL), "NATS URL, or a comma-separated list [VIGIL_NATS_URL]")
	f.StringVar(&n.creds, "creds", os.Getenv("VIGIL_NATS_CREDS"), "NATS credentials file [VIGIL_NATS_CREDS]")
	f.StringVar(&n.tlsCA, "tls-ca", os.Getenv("VIGIL_NATS_CA"), "CA certificate (PEM) to trust for NATS TLS [VIGIL_NATS_CA]")
	f.StringVar(&n.tlsCert, "tls-cert", os.Getenv("VIGIL_NATS_CERT"), "client certificate (PEM) for NATS TLS [VIGIL_NATS_CERT]")
	f.StringVar(&n.tlsKey, "tls-key", os.Getenv("VIGIL_NATS_KEY"), "client key (PEM) for NATS TLS [VIGIL_NATS_KEY]")
}

func (n *natsFlags) validate() error {
	if (n.tlsCert == "") != (n.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	return nil
}
