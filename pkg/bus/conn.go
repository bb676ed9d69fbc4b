package bus

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/vigil-cc/vigil/pkg/keyfile"
)

// DefaultURL is the NATS URL used when Config.URL is empty.
const DefaultURL = "nats://127.0.0.1:4222"

// DefaultPingInterval is Config.PingInterval's default; maxPingsOut pings
// without an answer make the server dead.
const (
	DefaultPingInterval = 5 * time.Second
	maxPingsOut         = 3
)

// Config says how to reach NATS.
type Config struct {
	// URL is one server URL or a comma-separated list of them.
	URL string
	// Name is the client connection name, usually the service name.
	Name string
	// CredsFile is a NATS credentials file (JWT and nkey seed).
	CredsFile string
	// UserJWT and NKeySeed authenticate as a user of an operator-mode
	// account without a file (pkg/busauth's Credentials): the user's JWT
	// and the seed of the nkey that signs the server's nonce. JWTSource,
	// when set instead of UserJWT, supplies the JWT at each connect and
	// reconnect, for credentials renewed while connected.
	UserJWT   string
	JWTSource JWTSource
	NKeySeed  string
	// User and Password, or Token, authenticate with users configured in
	// the server. Credentials in URL are refused along with these.
	User, Password string
	Token          string
	// InboxPrefix replaces "_INBOX" in the connection's reply subjects
	// (nats.CustomInboxPrefix): in operator mode a principal may hear only
	// its own prefix (busauth.InboxPrefix), so requests, JetStream API
	// calls and pull consumers need it.
	InboxPrefix string
	// TLSCAFile, TLSCertFile and TLSKeyFile configure TLS: a CA to trust and
	// an optional client certificate.
	TLSCAFile, TLSCertFile, TLSKeyFile string
	// TLSConfig overrides the TLS files when set.
	TLSConfig *tls.Config
	// InProcess, when set, connects inside the server's own process
	// (nats.InProcessServer: the embedded server of vigil dev) instead of
	// over TCP to URL: no socket, so a simulated fleet of 100,000 agents,
	// each on its own authenticated connection, needs no file per agent.
	// The server authenticates and confines such a client as any other.
	InProcess nats.InProcessConnProvider
	// WaitForServer makes Connect retry, with backoff, until a server
	// answers or ctx ends, instead of failing at once. Services set it;
	// command-line tools do not.
	WaitForServer bool
	// ReconnectWait is the base of the exponential reconnect backoff
	// (default 100 ms, capped at MaxReconnectWait, default 5 s, with jitter).
	ReconnectWait, MaxReconnectWait time.Duration
	// DrainTimeout bounds Close (default 10 s).
	DrainTimeout time.Duration
	// PingInterval is how often the client pings its server (default 5 s);
	// after 3 pings without an answer it takes the server for dead and
	// reconnects, to another server of a cluster. A server cut off the
	// network closes no socket: without pings (nats.go's default is every
	// 2 minutes) a publisher would wait on it for minutes.
	PingInterval time.Duration
	// Logger receives connection events; defaults to slog.Default().
	Logger *slog.Logger
	// TracerProvider and MeterProvider default to the otel globals.
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
}

// JWTSource supplies a user JWT each time the connection authenticates.
type JWTSource interface {
	UserJWT() (string, error)
}

// Conn is a connection to NATS with its JetStream context.
type Conn struct {
	NC  *nats.Conn
	JS  jetstream.JetStream
	cfg Config
	log *slog.Logger

	tracer  trace.Tracer
	metrics *busMetrics
	closed  chan struct{}
	secrets []string // credentials in cfg.URL, kept out of logs and errors
}

// ErrConnect is returned when no server could be reached.
var ErrConnect = errors.New("bus: cannot connect to NATS")

// Connect opens a connection. Unless cfg.WaitForServer is set, it fails at
// once when no server answers.
func Connect(ctx context.Context, cfg Config) (*Conn, error) {
	if cfg.URL == "" {
		cfg.URL = DefaultURL
	}
	if cfg.ReconnectWait <= 0 {
		cfg.ReconnectWait = 100 * time.Millisecond
	}
	if cfg.MaxReconnectWait <= 0 {
		cfg.MaxReconnectWait = 5 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "bus")
	servers := strings.Join(strings.Fields(strings.ReplaceAll(cfg.URL, ",", " ")), ",")
	// The URL can carry credentials (user:password@, token@), and so can
	// the configuration: only the URL's redacted form, and errors with
	// every credential removed, reach logs and errors.
	c := &Conn{cfg: cfg, log: log, closed: make(chan struct{}), secrets: secrets(servers, cfg)}
	shown := RedactURL(servers)
	for _, u := range strings.Split(servers, ",") {
		if err := checkURL(u); err != nil {
			return nil, err
		}
	}
	if err := checkAuth(servers, cfg); err != nil {
		return nil, err
	}
	opts, err := c.options()
	if err != nil {
		return nil, err
	}
	var nc *nats.Conn
	for attempt := 0; ; attempt++ {
		nc, err = nats.Connect(servers, opts...)
		if err == nil {
			break
		}
		err = c.redact(err)
		if !cfg.WaitForServer {
			return nil, fmt.Errorf("%w at %s: %w", ErrConnect, shown, err)
		}
		log.WarnContext(ctx, "waiting for NATS", "url", shown, "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w at %s: %w (last error: %w)", ErrConnect, shown, ctx.Err(), err)
		case <-time.After(backoff(cfg.ReconnectWait, cfg.MaxReconnectWait, attempt)):
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bus: jetstream: %w", err)
	}
	c.NC, c.JS = nc, js
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	c.tracer = tp.Tracer("github.com/vigil-cc/vigil/pkg/bus")
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	c.metrics = newBusMetrics(mp)
	return c, nil
}

func (c *Conn) options() ([]nats.Option, error) {
	cfg := c.cfg
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		nats.CustomReconnectDelay(func(attempts int) time.Duration {
			return backoff(cfg.ReconnectWait, cfg.MaxReconnectWait, attempts)
		}),
		nats.Timeout(5 * time.Second),
		nats.PingInterval(cmp.Or(cfg.PingInterval, DefaultPingInterval)),
		nats.MaxPingsOutstanding(maxPingsOut),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				c.log.Warn("disconnected from NATS", "err", c.redact(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			// ConnectedUrlRedacted hides a password but not a token.
			c.log.Info("reconnected to NATS", "url", RedactURL(nc.ConnectedUrl()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			c.log.Error("NATS async error", "subject", subj, "err", c.redact(err))
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(c.closed) }),
	}
	if cfg.CredsFile != "" {
		if err := keyfile.Check(cfg.CredsFile); err != nil {
			return nil, fmt.Errorf("bus: credentials file: %w", err)
		}
		opts = append(opts, nats.UserCredentials(cfg.CredsFile))
	}
	switch {
	case cfg.JWTSource != nil:
		kp, err := userKey(cfg.NKeySeed)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserJWT(cfg.JWTSource.UserJWT, kp.Sign))
	case cfg.UserJWT != "":
		if _, err := userKey(cfg.NKeySeed); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserJWTAndSeed(cfg.UserJWT, cfg.NKeySeed))
	case cfg.User != "":
		opts = append(opts, nats.UserInfo(cfg.User, cfg.Password))
	case cfg.Token != "":
		opts = append(opts, nats.Token(cfg.Token))
	}
	if cfg.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(cfg.InboxPrefix))
	}
	if cfg.InProcess != nil {
		opts = append(opts, nats.InProcessServer(cfg.InProcess))
	}
	switch {
	case cfg.TLSConfig != nil:
		opts = append(opts, nats.Secure(cfg.TLSConfig))
	default:
		if cfg.TLSCAFile != "" {
			opts = append(opts, nats.RootCAs(cfg.TLSCAFile))
		}
		if cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
			if cfg.TLSCertFile == "" || cfg.TLSKeyFile == "" {
				return nil, errors.New("bus: TLS client certificate needs both a cert file and a key file")
			}
			if err := keyfile.Check(cfg.TLSKeyFile); err != nil {
				return nil, fmt.Errorf("bus: TLS client key: %w", err)
			}
			opts = append(opts, nats.ClientCert(cfg.TLSCertFile, cfg.TLSKeyFile))
		}
	}
	return opts, nil
}

// ErrConflictingCredentials is returned when Config names more than one
// way to authenticate, or an incomplete one.
var ErrConflictingCredentials = errors.New("bus: conflicting NATS credentials")

// checkAuth checks that cfg authenticates one way at most, completely.
// Its errors never quote a credential.
func checkAuth(servers string, cfg Config) error {
	ways := 0
	var named []string
	add := func(set bool, name string) {
		if set {
			ways++
			named = append(named, name)
		}
	}
	add(cfg.CredsFile != "", "a credentials file")
	add(cfg.UserJWT != "" || cfg.JWTSource != nil, "a user JWT")
	add(cfg.User != "" || cfg.Password != "", "a user and password")
	add(cfg.Token != "", "a token")
	add(len(urlSecrets(servers)) > 0, "credentials in the URL")
	switch {
	case ways > 1:
		return fmt.Errorf("%w: %s; give one", ErrConflictingCredentials, strings.Join(named, ", "))
	case cfg.UserJWT != "" && cfg.JWTSource != nil:
		return fmt.Errorf("%w: UserJWT and JWTSource; give one", ErrConflictingCredentials)
	case (cfg.UserJWT != "" || cfg.JWTSource != nil) != (cfg.NKeySeed != ""):
		return fmt.Errorf("%w: a user JWT and its nkey seed go together", ErrConflictingCredentials)
	case (cfg.User == "") != (cfg.Password == ""):
		return fmt.Errorf("%w: a user and its password go together", ErrConflictingCredentials)
	}
	return nil
}

// userKey is the user nkey of seed; the error says what is wrong without
// quoting it.
func userKey(seed string) (nkeys.KeyPair, error) {
	kp, err := nkeys.FromSeed([]byte(seed))
	if err != nil {
		return nil, errors.New("bus: the nkey seed does not parse")
	}
	if pub, err := kp.PublicKey(); err != nil || !nkeys.IsValidPublicUserKey(pub) {
		return nil, errors.New("bus: the nkey seed is not a user's")
	}
	return kp, nil
}

// secrets returns the credentials of the URL list and of cfg, longest
// first, to be removed from errors.
func secrets(servers string, cfg Config) []string {
	out := urlSecrets(servers)
	for _, s := range []string{cfg.Password, cfg.Token, cfg.NKeySeed, cfg.UserJWT} {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// String describes the configuration without its credentials, whatever
// verb prints it.
func (c Config) String() string {
	var auth []string
	for _, a := range []struct {
		set  bool
		name string
	}{
		{c.CredsFile != "", "creds file " + c.CredsFile},
		{c.UserJWT != "" || c.JWTSource != nil, "user JWT"},
		{c.User != "", "user " + c.User},
		{c.Token != "", "token"},
	} {
		if a.set {
			auth = append(auth, a.name)
		}
	}
	if len(auth) == 0 {
		auth = append(auth, "none")
	}
	return fmt.Sprintf("bus.Config{URL: %s, Name: %s, auth: %s, InboxPrefix: %s}", RedactURL(c.URL), c.Name, strings.Join(auth, ", "), c.InboxPrefix)
}

// GoString is String, for %#v.
func (c Config) GoString() string { return c.String() }

// LogValue logs the configuration as String does.
func (c Config) LogValue() slog.Value { return slog.StringValue(c.String()) }

// redactedText replaces credentials in URLs, logs and errors.
const redactedText = "redacted"

// RedactURL returns a NATS URL, or a comma-separated list of them, with the
// credentials of each URL (the password of user:password@, or a token@)
// replaced by "redacted", for logs, errors and messages.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, u := range parts {
		info, at, ok := userinfo(u)
		if !ok {
			continue
		}
		if user, _, hasPassword := strings.Cut(u[info:at], ":"); hasPassword {
			parts[i] = u[:info] + user + ":" + redactedText + u[at:]
		} else {
			parts[i] = u[:info] + redactedText + u[at:]
		}
	}
	return strings.Join(parts, ",")
}

// userinfo locates the credentials of one URL: u[start:at] precedes the
// last '@' (a password with an unescaped '@' or '/' included).
func userinfo(u string) (start, at int, ok bool) {
	if i := strings.Index(u, "://"); i >= 0 {
		start = i + len("://")
	}
	at = strings.LastIndex(u, "@")
	if at < start {
		return 0, 0, false
	}
	return start, at, true
}

// ErrInvalidURL is returned for a NATS URL that does not parse, or whose
// credentials do not parse as such (a password with an unescaped '/', for
// example, would be taken for part of the host).
var ErrInvalidURL = errors.New("bus: invalid NATS URL")

// checkURL checks one NATS URL as nats.Connect will parse it. Its error
// shows the URL redacted and leaves out the parser's message, which quotes
// the URL, or fragments of the password, as written.
func checkURL(u string) error {
	full := u
	if !strings.Contains(u, "://") {
		full = "nats://" + u
	}
	p, err := url.Parse(full)
	ok := err == nil && p.Host != ""
	if _, at, hasCreds := userinfo(u); ok && hasCreds {
		// The parser must find the credentials where Vigil does, or it
		// takes part of them for the host.
		ok = p.User != nil && strings.HasPrefix(u[at+1:], p.Host)
	}
	if !ok {
		return fmt.Errorf("%w %q: want [scheme://][user:password@ or token@]host:port with the credentials URL-escaped", ErrInvalidURL, RedactURL(u))
	}
	return nil
}

// urlSecrets returns the passwords and tokens in a URL list, as written and
// unescaped, so that they can be removed from error messages (a URL that
// fails to parse is quoted whole in the error).
func urlSecrets(urls string) []string {
	var out []string
	add := func(s string) {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	for _, u := range strings.Split(urls, ",") {
		info, at, ok := userinfo(u)
		if !ok {
			continue
		}
		secret := u[info:at]
		if _, password, hasPassword := strings.Cut(secret, ":"); hasPassword {
			secret = password
		}
		add(secret)
		if s, err := url.PathUnescape(secret); err == nil {
			add(s)
		}
	}
	// Longest first, so that a secret containing another is removed whole.
	slices.SortFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out
}

// redact returns err with the connection's credentials removed from its
// message. The result still matches what err matches with errors.Is, but
// does not unwrap to err, whose message holds them.
func (c *Conn) redact(err error) error {
	if err == nil || len(c.secrets) == 0 {
		return err
	}
	msg := err.Error()
	clean := msg
	for _, s := range c.secrets {
		clean = strings.ReplaceAll(clean, s, redactedText)
	}
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

// redactedError is an error whose message had credentials removed.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }

// Is lets errors.Is see through to the original error.
func (e *redactedError) Is(target error) bool { return errors.Is(e.err, target) }

// backoff is exponential from base, capped at max, with ±20% jitter.
func backoff(base, max time.Duration, attempt int) time.Duration {
	d := base
	for i := 0; i < attempt && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	jitter := time.Duration(rand.Int64N(int64(d)/5 + 1))
	if rand.IntN(2) == 0 {
		return d - jitter
	}
	return d + jitter
}

// Close drains the connection (pending publishes and handlers finish, no new
// messages arrive) and waits, up to Config.DrainTimeout, until it is closed.
func (c *Conn) Close() error {
	if c == nil || c.NC == nil {
		return nil
	}
	if c.NC.IsClosed() {
		return nil
	}
	if err := c.NC.Drain(); err != nil {
		c.NC.Close()
		return fmt.Errorf("bus: drain: %w", err)
	}
	select {
	case <-c.closed:
		return nil
	case <-time.After(c.cfg.DrainTimeout):
		c.NC.Close()
		return fmt.Errorf("bus: drain did not finish within %s", c.cfg.DrainTimeout)
	}
}

// Logger is the connection's logger.
func (c *Conn) Logger() *slog.Logger { return c.log }

// Tracer is the tracer the connection records spans with.
func (c *Conn) Tracer() trace.Tracer { return c.tracer }
