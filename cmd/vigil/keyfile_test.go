package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Threat: the CLI's NATS credentials, TLS client key or keyguard's master
// key in a file other users can read. Defence: the commands refuse the file
// (exit 2), naming it, its mode and the fix, before connecting.
func TestKeyFilesReadableByOthersRefused(t *testing.T) {
	dir := t.TempDir()
	file := func(name string, mode os.FileMode, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	creds := file("ops.creds", 0o644, "credentials\n")
	tlsKey := file("client.key", 0o640, "key\n")
	cert := file("client.crt", 0o644, "certificate\n")
	master := file("master.key", 0o644, strings.Repeat("ab", 32)+"\n")
	secret := file("secret", 0o600, "s3cret")
	server := []string{"--nats-url", "nats://127.0.0.1:1"}
	cases := []struct {
		name    string
		args    []string
		refused string
	}{
		{"events tail --nats-creds", append([]string{"events", "tail", "--nats-creds", creds}, server...), creds},
		{"events tail --nats-key", append([]string{"events", "tail", "--nats-cert", cert, "--nats-key", tlsKey}, server...), tlsKey},
		{"keyguard revoke --nats-creds", append([]string{"keyguard", "revoke", "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm", "--reason", "r", "--actor", "a", "--nats-creds", creds}, server...), creds},
		{"keyguard secret put --master-key-file", append([]string{"keyguard", "secret", "put", "disk-key", "--file", secret, "--master-key-file", master}, server...), master},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _, err := runVigil(ctx, tc.args...)
			if exitCode(err) != 2 || !strings.Contains(err.Error(), tc.refused) || !strings.Contains(err.Error(), "chmod 600") {
				t.Fatalf("exit %d: %v; want exit 2 refusing %s with the fix", exitCode(err), err, tc.refused)
			}
		})
	}
}
