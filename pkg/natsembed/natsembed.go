// Package natsembed runs a nats-server with JetStream inside the current
// process: the embedded default of `vigil dev` and the base of natstest.
package natsembed

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config describes an embedded server.
type Config struct {
	Name     string // server name; defaults to "vigil"
	Host     string // defaults to 127.0.0.1
	Port     int    // 0 picks a free port
	StoreDir string // JetStream storage directory (required)

	// Cluster, when ClusterPort is set, joins the server to a cluster.
	ClusterName string
	ClusterPort int
	Routes      []string // host:port of the other servers' cluster listeners

	// MaxPayload overrides the 1 MiB default maximum message size.
	MaxPayload int32
	// Logging enables the server's own log on stderr.
	Logging bool
	// ReadyTimeout bounds start-up; defaults to 10 s.
	ReadyTimeout time.Duration
	// ConfigText is nats-server configuration applied before the fields
	// above, which take precedence: accounts, users, exports and imports.
	ConfigText string
}

// Server is a running embedded nats-server.
type Server struct {
	*server.Server
	cfg Config
}

// ErrNotReady is returned when the server does not accept connections in time.
var ErrNotReady = errors.New("natsembed: server not ready")

// Start starts a server and waits until it accepts connections. With
// Port 0, a free port is chosen and kept in Config() so that a restart
// reuses it.
func Start(cfg Config) (*Server, error) {
	if cfg.StoreDir == "" {
		return nil, errors.New("natsembed: StoreDir is required")
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	if cfg.Name == "" {
		cfg.Name = "vigil"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 10 * time.Second
	}
	if cfg.Port == 0 {
		p, err := FreePort(cfg.Host)
		if err != nil {
			return nil, err
		}
		cfg.Port = p
	}
	opts := &server.Options{}
	if cfg.ConfigText != "" {
		if err := opts.ProcessConfigString(cfg.ConfigText); err != nil {
			return nil, fmt.Errorf("natsembed: configuration: %w", err)
		}
	}
	opts.ServerName = cfg.Name
	opts.Host = cfg.Host
	opts.Port = cfg.Port
	opts.JetStream = true
	opts.StoreDir = cfg.StoreDir
	opts.NoSigs = true
	opts.NoLog = !cfg.Logging
	opts.MaxPayload = cfg.MaxPayload
	if cfg.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: cfg.ClusterName, Host: cfg.Host, Port: cfg.ClusterPort}
		for _, r := range cfg.Routes {
			u, err := url.Parse("nats://" + r)
			if err != nil {
				return nil, fmt.Errorf("natsembed: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	if cfg.Logging {
		s.ConfigureLogger()
	}
	s.Start()
	if !s.ReadyForConnections(cfg.ReadyTimeout) {
		s.Shutdown()
		return nil, fmt.Errorf("%w after %s on %s:%d", ErrNotReady, cfg.ReadyTimeout, cfg.Host, cfg.Port)
	}
	return &Server{Server: s, cfg: cfg}, nil
}

// Config returns the configuration the server runs with, its port filled in.
func (s *Server) Config() Config { return s.cfg }

// URL is the client URL of the server.
func (s *Server) URL() string {
	return "nats://" + net.JoinHostPort(s.cfg.Host, strconv.Itoa(s.cfg.Port))
}

// Stop shuts the server down and waits for it to finish.
func (s *Server) Stop() {
	s.Shutdown()
	s.WaitForShutdown()
}

// FreePort returns a TCP port that was free on host a moment ago.
func FreePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("natsembed: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
