package telemetry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// DefaultShutdownTimeout bounds graceful shutdown of a Server when
// Server.ShutdownTimeout is zero.
const DefaultShutdownTimeout = 5 * time.Second

// Server is an HTTP server for a process's operational endpoints:
// /healthz, /readyz and /metrics, plus whatever else is added with Handle
// (a service's webhook, for example).
type Server struct {
	// ShutdownTimeout bounds how long Serve waits for requests in flight
	// once its context ends; DefaultShutdownTimeout when zero.
	ShutdownTimeout time.Duration

	mux *http.ServeMux
	ln  net.Listener
	srv *http.Server
}

// Listen binds addr (host:port; port 0 picks a free one) and returns a
// Server that serves /healthz and /readyz from h (a fresh Health with no
// checks when nil) and /metrics from t (left out when t is nil). Serve
// starts answering.
func Listen(addr string, t *Telemetry, h *Health) (*Server, error) {
	s, err := ListenBare(addr)
	if err != nil {
		return nil, err
	}
	if h == nil {
		h = NewHealth()
	}
	s.Handle("GET /healthz", h.LivenessHandler())
	s.Handle("GET /readyz", h.ReadinessHandler())
	if t != nil {
		s.Handle("GET /metrics", t.MetricsHandler())
	}
	return s, nil
}

// ListenBare binds addr and returns a Server that answers 404 to
// everything until routes are added with Handle: for an endpoint that faces
// callers who are not to see a process's health and metrics (ingest's
// webhook).
func ListenBare(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("telemetry: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	return &Server{mux: mux, ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}}, nil
}

// Addr is the address the server listens on, with the port filled in.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// URL is http://Addr.
func (s *Server) URL() string { return "http://" + s.Addr() }

// Handle adds a route, with http.ServeMux patterns ("POST /eventgrid").
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Serve answers requests until ctx ends, then stops accepting, waits for
// requests in flight (bounded by ShutdownTimeout) and returns nil. It
// returns an error when the server fails or does not drain in time.
func (s *Server) Serve(ctx context.Context) error {
	s.srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("telemetry: serve on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	timeout := s.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("telemetry: shut down server on %s: %w", s.Addr(), err)
	}
	return nil
}

// Close stops the server at once (listener included), without waiting for
// requests in flight; use it when Serve was never called.
func (s *Server) Close() error {
	err := s.srv.Close()
	if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}
