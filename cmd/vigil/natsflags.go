package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/pflag"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// natsFlags are the connection flags of every command that talks to NATS.
// They are the services' own (pkg/svcmain Flags.NATS): the same names,
// environment variables, default URL and usage text, written --nats-url
// here and -nats-url there. TestNATSFlagsMatchServices keeps them so.
type natsFlags struct {
	url, creds, ca, cert, key string
	fs                        *pflag.FlagSet
}

func (n *natsFlags) register(f *pflag.FlagSet) {
	n.fs = f
	// VIGIL_NATS_URL is read in validate, not shown as the flag's default:
	// a URL may carry credentials, and --help prints defaults.
	f.StringVar(&n.url, "nats-url", bus.DefaultURL, "NATS server URL, or a comma-separated list [VIGIL_NATS_URL]")
	f.StringVar(&n.creds, "nats-creds", os.Getenv("VIGIL_NATS_CREDS"), "NATS credentials file; only its owner may read it [VIGIL_NATS_CREDS]")
	f.StringVar(&n.ca, "nats-ca", os.Getenv("VIGIL_NATS_CA"), "CA certificate (PEM) to trust for NATS TLS [VIGIL_NATS_CA]")
	f.StringVar(&n.cert, "nats-cert", os.Getenv("VIGIL_NATS_CERT"), "client certificate (PEM) for NATS TLS, with the client key [VIGIL_NATS_CERT]")
	f.StringVar(&n.key, "nats-key", os.Getenv("VIGIL_NATS_KEY"), "client key (PEM) for NATS TLS, with the client certificate; only its owner may read it [VIGIL_NATS_KEY]")
}

func (n *natsFlags) validate() error {
	if v := os.Getenv("VIGIL_NATS_URL"); v != "" && (n.fs == nil || !n.fs.Changed("nats-url")) {
		n.url = v
	}
	if (n.cert == "") != (n.key == "") {
		return errors.New("--nats-cert and --nats-key go together")
	}
	// The credentials and the client key are secrets: refuse files that
	// others may read (pkg/bus does the same for the services).
	for _, f := range []struct{ flag, path string }{{"--nats-creds", n.creds}, {"--nats-key", n.key}} {
		if f.path == "" {
			continue
		}
		if err := keyfile.Check(f.path); err != nil {
			return fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	return nil
}

// busConfig is the connection the flags describe, after validate, for the
// client name.
func (n *natsFlags) busConfig(client string) bus.Config {
	return bus.Config{URL: n.url, Name: client, CredsFile: n.creds, TLSCAFile: n.ca, TLSCertFile: n.cert, TLSKeyFile: n.key,
		InboxPrefix: n.inboxPrefix()}
}

// credentials reads the credentials file (--nats-creds): the principal,
// name and inbox prefix of its user. Without a file they are empty.
func (n *natsFlags) credentials() (busauth.Credentials, error) {
	if n.creds == "" {
		return busauth.Credentials{}, nil
	}
	c, err := busauth.ReadCreds(n.creds)
	if err != nil {
		return busauth.Credentials{}, usageError("--nats-creds: %v", err)
	}
	return c, nil
}

// inboxPrefix is the inbox prefix of the user of the credentials file, ""
// without one: in operator mode a principal hears replies, JetStream's
// answers included, on its own prefix only (busauth). A file that cannot
// be read gives "" here; connecting reports why.
func (n *natsFlags) inboxPrefix() string {
	c, _ := n.credentials()
	return c.InboxPrefix
}
