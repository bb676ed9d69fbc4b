package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// natsFlags are the connection flags of every command that talks to NATS.
// Their environment fallbacks are the services' own (VIGIL_NATS_URL,
// VIGIL_NATS_CREDS, VIGIL_NATS_CA, VIGIL_NATS_CERT, VIGIL_NATS_KEY).
type natsFlags struct {
	server, creds, tlsCA, tlsCert, tlsKey string
	fs                                    *pflag.FlagSet
}

func (n *natsFlags) register(f *pflag.FlagSet) {
	n.fs = f
	// VIGIL_NATS_URL is read in validate, not shown as the flag's default:
	// a URL may carry credentials, and --help prints defaults.
	f.StringVar(&n.server, "server", defaultNATSURL, "NATS URL, or a comma-separated list [VIGIL_NATS_URL]")
	f.StringVar(&n.creds, "creds", os.Getenv("VIGIL_NATS_CREDS"), "NATS credentials file [VIGIL_NATS_CREDS]")
	f.StringVar(&n.tlsCA, "tls-ca", os.Getenv("VIGIL_NATS_CA"), "CA certificate (PEM) to trust for NATS TLS [VIGIL_NATS_CA]")
	f.StringVar(&n.tlsCert, "tls-cert", os.Getenv("VIGIL_NATS_CERT"), "client certificate (PEM) for NATS TLS [VIGIL_NATS_CERT]")
	f.StringVar(&n.tlsKey, "tls-key", os.Getenv("VIGIL_NATS_KEY"), "client key (PEM) for NATS TLS [VIGIL_NATS_KEY]")
}

func (n *natsFlags) validate() error {
	if v := os.Getenv("VIGIL_NATS_URL"); v != "" && (n.fs == nil || !n.fs.Changed("server")) {
		n.server = v
	}
	if (n.tlsCert == "") != (n.tlsKey == "") {
		return errors.New("--tls-cert and --tls-key go together")
	}
	// The credentials and the client key are secrets: refuse files that
	// others may read (pkg/bus does the same for the services).
	for _, f := range []struct{ flag, path string }{{"--creds", n.creds}, {"--tls-key", n.tlsKey}} {
		if f.path == "" {
			continue
		}
		if err := keyfile.Check(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	return nil
}
