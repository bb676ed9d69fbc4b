package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/vigil-cc/vigil/services/notifier/sink"
)

// receiveMaxBody bounds a notification's body.
const receiveMaxBody = 1 << 20

func newAlertsReceiveCmd() *cobra.Command {
	var listen, origin string
	var secrets []string
	var count int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "receive --listen ADDR --secret whsec_...",
		Short: "A webhook receiver to test a subscription end to end: answers the handshake, verifies signatures, prints alerts",
		Long: `receive serves the CloudEvents webhook a subscription delivers to: it consents to the
validation handshake (OPTIONS with WebHook-Request-Origin), verifies every delivery's
Standard Webhooks signature with --secret (401 when it does not verify, 400 when the body
is not a CloudEvent) and prints each alert on stdout: one line, or the CloudEvent with
--json. Subscribe it with vigil alerts subscribe --protocol webhook --sink http://ADDR/
--secret S --allow-private-sinks (and a notifier run with -allow-private-sinks).`,
		Example: `  vigil alerts receive --listen 127.0.0.1:9099 --secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(secrets) == 0 {
				if s := os.Getenv("VIGIL_WEBHOOK_SECRET"); s != "" {
					secrets = []string{s}
				}
			}
			if len(secrets) == 0 {
				return usageError("--secret is required (or VIGIL_WEBHOOK_SECRET)")
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return &exitError{code: 1, msg: err.Error()}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "receiving on http://%s/\n", ln.Addr())
			ctx, cancel := context.WithCancel(cmd.Context())
			defer cancel()
			r := &receiver{out: cmd.OutOrStdout(), secrets: secrets, origin: origin, asJSON: asJSON, count: count, done: cancel}
			srv := &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-ctx.Done()
				sctx, c := context.WithTimeout(context.Background(), 2*time.Second)
				defer c()
				_ = srv.Shutdown(sctx)
			}()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return &exitError{code: 1, msg: err.Error()}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&listen, "listen", "127.0.0.1:9099", "address to listen on")
	f.StringArrayVar(&secrets, "secret", nil, "the subscription's whsec_ secret (repeatable during a rotation) [VIGIL_WEBHOOK_SECRET]")
	f.StringVar(&origin, "allow-origin", "*", "the WebHook-Request-Origin consented to in the handshake (* for any)")
	f.IntVar(&count, "count", 0, "exit after this many verified notifications (0: run until interrupted)")
	f.BoolVar(&asJSON, "json", false, "print each CloudEvent as a JSON line")
	return cmd
}

// receiver is vigil alerts receive's handler.
type receiver struct {
	out     io.Writer
	secrets []string
	origin  string
	asJSON  bool
	count   int
	done    func()

	mu   sync.Mutex
	seen int
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	switch req.Method {
	case http.MethodOptions:
		o := req.Header.Get(sink.HeaderRequestOrigin)
		if o == "" || r.origin != "*" && o != r.origin {
			http.Error(w, "origin not allowed", http.StatusForbidden)
			return
		}
		w.Header().Set(sink.HeaderAllowedOrigin, o)
		w.Header().Set(sink.HeaderAllowedRate, "*")
		return
	case http.MethodPost:
	default:
		http.Error(w, "POST or OPTIONS", http.StatusMethodNotAllowed)
		return
	}
	body, err := io.ReadAll(io.LimitReader(req.Body, receiveMaxBody+1))
	if err != nil || len(body) > receiveMaxBody {
		http.Error(w, "body too large or unreadable", http.StatusRequestEntityTooLarge)
		return
	}
	if err := sink.Verify(r.secrets, req.Header, body, time.Now(), 0); err != nil {
		http.Error(w, "signature: "+err.Error(), http.StatusUnauthorized)
		return
	}
	var ev sink.CloudEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.asJSON {
		fmt.Fprintf(r.out, "%s\n", body)
	} else {
		a := ev.Data.Alert
		line := fmt.Sprintf("%s %-8s %-8s %-24s %s %s", ev.Time.Format(time.RFC3339), ev.Data.State, a.Severity, a.Code, a.VMKey, a.Message)
		if n := len(ev.Data.Digest); n > 0 {
			line += fmt.Sprintf(" (digest of %d)", n)
		}
		fmt.Fprintln(r.out, line)
	}
	w.WriteHeader(http.StatusNoContent)
	r.seen++
	if r.count > 0 && r.seen >= r.count {
		r.done()
	}
}
