package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/svcmain"
)

// natsFlagInfo is what the two flag sets say about one NATS flag.
type natsFlagInfo struct{ env, def, usage string }

var (
	cliUsageEnv = regexp.MustCompile(`^(.*) \[(VIGIL_[A-Z_]+)\]$`)
	svcUsageEnv = regexp.MustCompile(`^(.*) \(env (VIGIL_[A-Z_]+)\)$`)
)

// unsetNATSEnv clears the VIGIL_NATS_* variables for the test.
func unsetNATSEnv(t *testing.T) {
	for _, v := range []string{"VIGIL_NATS_URL", "VIGIL_NATS_CREDS", "VIGIL_NATS_CA", "VIGIL_NATS_CERT", "VIGIL_NATS_KEY"} {
		t.Setenv(v, "") // restored after the test
		os.Unsetenv(v)
	}
}

// The vigil CLI and the services (pkg/svcmain) name their NATS settings
// one way: the same flags, environment variables, defaults and usage text.
func TestNATSFlagsMatchServices(t *testing.T) {
	unsetNATSEnv(t)
	svc := map[string]natsFlagInfo{}
	sf := svcmain.NewFlags("vigil-test")
	sf.NATS("vigil-test")
	sf.VisitAll(func(f *flag.Flag) {
		m := svcUsageEnv.FindStringSubmatch(f.Usage)
		if m == nil {
			t.Fatalf("svcmain -%s: usage %q does not end in (env VIGIL_...)", f.Name, f.Usage)
		}
		if m[2] != svcmain.EnvName(f.Name) {
			t.Errorf("svcmain -%s: usage names %s, the flag reads %s", f.Name, m[2], svcmain.EnvName(f.Name))
		}
		svc[f.Name] = natsFlagInfo{env: svcmain.EnvName(f.Name), def: f.DefValue, usage: m[1]}
	})
	cli := map[string]natsFlagInfo{}
	fs := pflag.NewFlagSet("vigil", pflag.ContinueOnError)
	(&natsFlags{}).register(fs)
	fs.VisitAll(func(f *pflag.Flag) {
		m := cliUsageEnv.FindStringSubmatch(f.Usage)
		if m == nil {
			t.Fatalf("vigil --%s: usage %q does not end in [VIGIL_...]", f.Name, f.Usage)
		}
		cli[f.Name] = natsFlagInfo{env: m[2], def: f.DefValue, usage: m[1]}
	})
	names := func(m map[string]natsFlagInfo) []string {
		var s []string
		for n := range m {
			s = append(s, n)
		}
		slices.Sort(s)
		return s
	}
	if got, want := names(cli), names(svc); !slices.Equal(got, want) {
		t.Fatalf("vigil's NATS flags are %v, the services' %v", got, want)
	}
	for name, want := range svc {
		if got := cli[name]; got != want {
			t.Errorf("--%s:\n vigil    %+v\n services %+v", name, got, want)
		}
	}
}

// The same VIGIL_NATS_* environment gives the CLI and a service the same
// connection settings.
func TestNATSEnvMatchesServices(t *testing.T) {
	unsetNATSEnv(t)
	dir := t.TempDir()
	file := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(name+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	env := map[string]string{
		"VIGIL_NATS_URL":   "nats://a.example:4222,nats://b.example:4222",
		"VIGIL_NATS_CREDS": file("ops.creds"),
		"VIGIL_NATS_CA":    file("ca.pem"),
		"VIGIL_NATS_CERT":  file("client.pem"),
		"VIGIL_NATS_KEY":   file("client.key"),
	}
	for k, v := range env {
		t.Setenv(k, v)
	}
	sf := svcmain.NewFlags("vigil-test")
	svcConfig := sf.NATS("client")
	if err := sf.Parse(nil); err != nil {
		t.Fatal(err)
	}
	var n natsFlags
	fs := pflag.NewFlagSet("vigil", pflag.ContinueOnError)
	n.register(fs)
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if err := n.validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := n.busConfig("client"), svcConfig(); got != want {
		t.Errorf("from the same environment\n vigil    %+v\n services %+v", got, want)
	}
	if got := n.busConfig("client").URL; got != env["VIGIL_NATS_URL"] {
		t.Errorf("URL = %q, want VIGIL_NATS_URL %q", got, env["VIGIL_NATS_URL"])
	}
	// A flag given on the command line wins over its variable, as for the
	// services.
	sf = svcmain.NewFlags("vigil-test")
	svcConfig = sf.NATS("client")
	if err := sf.Parse([]string{"-nats-url", "nats://c.example:4222"}); err != nil {
		t.Fatal(err)
	}
	n = natsFlags{}
	fs = pflag.NewFlagSet("vigil", pflag.ContinueOnError)
	n.register(fs)
	if err := fs.Parse([]string{"--nats-url", "nats://c.example:4222"}); err != nil {
		t.Fatal(err)
	}
	if err := n.validate(); err != nil {
		t.Fatal(err)
	}
	if got, want := n.busConfig("client"), svcConfig(); got != want || !strings.HasPrefix(got.URL, "nats://c.") {
		t.Errorf("with --nats-url\n vigil    %+v\n services %+v", got, want)
	}
}

// A command connecting with a principal's credentials file listens for
// replies on that principal's inbox prefix: in operator mode it may
// subscribe to nothing else of the kind (busauth), so JetStream's answers
// and request replies would never reach it otherwise.
func TestNATSFlagsTakeTheInboxPrefixOfTheCredentials(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := set.WriteDir(dir); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), "other.creds")
	if err := os.WriteFile(other, []byte("not a creds file"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, creds, want string
	}{
		{"no credentials", "", ""},
		{"administrator", filepath.Join(dir, busauth.CredsFile(busauth.Admin)), busauth.AdminInboxPrefix(busauth.DefaultAdminName)},
		{"a service", filepath.Join(dir, busauth.CredsFile(busauth.Keyguard)), busauth.InboxPrefix(busauth.Keyguard)},
		{"unreadable: connecting says why", other, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := natsFlags{creds: tt.creds}
			if got := n.busConfig("test").InboxPrefix; got != tt.want {
				t.Errorf("InboxPrefix = %q, want %q", got, tt.want)
			}
		})
	}
}
