// Command vigil-console serves Vigil's read-only fleet console in the
// browser: the fleet's attestation state, live (docs/console.md).
//
// Every flag has a VIGIL_* environment fallback (flag -token-file reads
// VIGIL_TOKEN_FILE).
package main

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/vigil-cc/vigil/pkg/keyfile"
	"github.com/vigil-cc/vigil/pkg/svcmain"
	"github.com/vigil-cc/vigil/services/console"
)

func main() { svcmain.Main("vigil-console", define) }

func define(f *svcmain.Flags) svcmain.RunFunc {
	options := f.Service("vigil-console", ":8089")
	addr := f.String("addr", console.DefaultAddr, "the web console's address; any but loopback requires -token-file or -proxy-header")
	tokenFile := f.String("token-file", "", "file holding the bearer token every request must carry (Authorization: Bearer, or the /login form's cookie); only its owner may read it")
	proxyHeader := f.String("proxy-header", "", "header set by an authenticating reverse proxy (e.g. X-Forwarded-User): requests carrying it are admitted")
	logDir := f.String("audit-log", "", "audit log directory to verify and prove events from (read-only); or -audit-url")
	logURL := f.String("audit-url", "", "URL of the audit log served over HTTP(S), e.g. the auditor's http://auditor:8083/log/ (instead of -audit-log)")
	key := f.String("audit-key", "", "the audit log's verifier (public) key file")
	verifyEvery := f.Duration("verify-every", 0, "how often the audit log is verified (default 30s)")
	interval := f.Duration("interval", 0, "the fleet's re-attestation interval (default 5m)")
	return func(ctx context.Context, rt svcmain.Runtime) error {
		var token string
		if *tokenFile != "" {
			b, err := keyfile.Read(*tokenFile, 4<<10)
			if err != nil {
				return fmt.Errorf("%w: -token-file: %w", svcmain.ErrUsage, err)
			}
			token = strings.TrimSpace(string(b))
		}
		err := console.Run(ctx, console.Config{
			Options: options(rt), Addr: *addr, Token: token, ProxyHeader: *proxyHeader,
			AuditLogDir: *logDir, AuditURL: *logURL, AuditKeyFile: *key, VerifyEvery: *verifyEvery, Interval: *interval,
		})
		if errors.Is(err, console.ErrAccess) {
			return fmt.Errorf("%w: %w", svcmain.ErrUsage, err)
		}
		return err
	}
}
