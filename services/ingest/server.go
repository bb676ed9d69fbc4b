package ingest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/vigil-cc/vigil/pkg/telemetry"
)

// webhookServer serves the Event Grid webhook and nothing else: health and
// metrics are on the ops listener (Config.OpsAddr), which need not face
// Azure.
type webhookServer struct {
	ln  net.Listener
	srv *http.Server
}

// listenWebhook binds addr and routes POST and OPTIONS on path to hook;
// every other request is answered 404 (or 405 on path).
func listenWebhook(addr, path string, hook http.Handler) (*webhookServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ingest: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("POST "+path, hook)
	mux.Handle("OPTIONS "+path, hook)
	return &webhookServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}}, nil
}

// Addr is the address the server listens on, with the port filled in.
func (s *webhookServer) Addr() string { return s.ln.Addr().String() }

// Serve answers deliveries until ctx ends, then stops accepting and waits
// for deliveries in flight (at most telemetry.DefaultShutdownTimeout).
func (s *webhookServer) Serve(ctx context.Context) error {
	s.srv.BaseContext = func(net.Listener) context.Context { return context.WithoutCancel(ctx) }
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("ingest: serve on %s: %w", s.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), telemetry.DefaultShutdownTimeout)
	defer cancel()
	err := s.srv.Shutdown(sctx)
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	if err != nil {
		_ = s.srv.Close()
		return fmt.Errorf("ingest: shut down the webhook server on %s: %w", s.Addr(), err)
	}
	return nil
}

// Close stops the server at once; for when Serve was never called.
func (s *webhookServer) Close() error {
	err := s.srv.Close()
	if cerr := s.ln.Close(); err == nil && cerr != nil && !errors.Is(cerr, net.ErrClosed) {
		err = cerr
	}
	return err
}
