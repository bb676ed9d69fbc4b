package console

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/vigil-cc/vigil/pkg/service"
)

// DefaultAddr is where the console listens unless told otherwise: loopback
// only, where it needs no token.
const DefaultAddr = "127.0.0.1:8088"

// ErrAccess is returned by Run when the console would listen on an address
// other than loopback without a token or a proxy header to require.
var ErrAccess = errors.New("console: a non-loopback address needs a token or a proxy header")

// Config configures a console.
type Config struct {
	service.Options

	// Addr is the web console's address (host:port; port 0 picks a free
	// one). Default DefaultAddr.
	Addr string
	// OnConsoleListen, when set, is called with the console's URL once it
	// listens.
	OnConsoleListen func(url string)

	// Token, when set, is required of every request: an Authorization
	// "Bearer" header, or the cookie the /login form sets. Required (or
	// ProxyHeader) when Addr is not a loopback address.
	Token string
	// ProxyHeader names a header that an authenticating reverse proxy in
	// front of the console sets (for example X-Forwarded-User): a request
	// carrying it is admitted. Only safe when nothing but the proxy can
	// reach Addr.
	ProxyHeader string

	// AuditLogDir is the audit log directory (tlog-tiles) the console
	// verifies and proves events from; AuditKeyFile the log's verifier
	// (public) key. Without them the audit page shows the published
	// checkpoints only.
	AuditLogDir  string
	AuditKeyFile string
	// AuditURL is, instead of AuditLogDir, where the log is served over
	// HTTP(S) in the tlog-tiles layout: the auditor's /log/ (for example
	// http://auditor:8083/log/). What it serves is verified against
	// checkpoints signed by AuditKeyFile's key, so plain HTTP is enough.
	AuditURL string
	// AuditTimeout bounds each request to AuditURL. Default 10s.
	AuditTimeout time.Duration
	// VerifyEvery is how often the console verifies the audit log.
	// Default 30s.
	VerifyEvery time.Duration

	// Interval is the fleet's re-attestation interval: the overview counts
	// the VMs attested within it. Default 5m.
	Interval time.Duration
	// Heartbeat is the interval of the live stream's heartbeats. Default 15s.
	Heartbeat time.Duration
	// PageSize is the VM table's rows per page. Default 50.
	PageSize int
}

func (c Config) withDefaults() (Config, error) {
	if c.Addr == "" {
		c.Addr = DefaultAddr
	}
	if c.VerifyEvery <= 0 {
		c.VerifyEvery = 30 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Minute
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 15 * time.Second
	}
	if c.PageSize <= 0 {
		c.PageSize = 50
	}
	loop, err := loopback(c.Addr)
	if err != nil {
		return c, fmt.Errorf("console: address %q: %w", c.Addr, err)
	}
	if !loop && c.Token == "" && c.ProxyHeader == "" {
		return c, fmt.Errorf("%w (%s)", ErrAccess, c.Addr)
	}
	return c, nil
}

// loopback reports whether addr's host is a loopback address (or
// localhost).
func loopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
