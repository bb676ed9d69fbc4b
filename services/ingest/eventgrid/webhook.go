package eventgrid

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// StoreFunc stores accepted events durably (in JetStream) and returns only
// when every one of them is stored. Any error means the delivery is retried.
type StoreFunc func(ctx context.Context, evs []Event) error

// HandlerConfig configures the webhook.
type HandlerConfig struct {
	// Store is called with every accepted event of a delivery.
	Store StoreFunc
	// Secrets, when enabled, are required in the query string.
	Secrets *Secrets
	// Tokens, when set, validates Entra ID bearer tokens.
	Tokens *TokenValidator
	// Limits bound each delivery.
	Limits Limits
	// MaxBodyBytes bounds a request body (default 4 MiB: a batch is at most
	// Event Grid's preferred batch size of 1 MB, or one event of up to 1 MB).
	MaxBodyBytes int64
	// StoreTimeout bounds how long a delivery waits for storage (default
	// 25 s, within Event Grid's 30 s delivery timeout).
	StoreTimeout time.Duration
	// AllowedOrigins are answered in the CloudEvents abuse-protection
	// handshake; empty means any origin that asks (the request is
	// authenticated like a delivery).
	AllowedOrigins []string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Observe, when set, is told the outcome of every request.
	Observe func(status int, accepted, rejected int)
	// AfterStore, when set, runs after a delivery is stored and before it
	// is answered (fault-injection tests kill the handler there).
	AfterStore func(*http.Request)
}

// Handler is the webhook http.Handler.
type Handler struct {
	cfg HandlerConfig
	log *slog.Logger
}

// NewHandler builds the webhook handler.
func NewHandler(cfg HandlerConfig) (*Handler, error) {
	if cfg.Store == nil {
		return nil, errors.New("eventgrid: handler needs a Store")
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 4 << 20
	}
	if cfg.StoreTimeout <= 0 {
		cfg.StoreTimeout = 25 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Handler{cfg: cfg, log: log.With("component", "webhook")}, nil
}

// ValidationResponse answers a SubscriptionValidationEvent.
type ValidationResponse struct {
	ValidationResponse string `json:"validationResponse"`
}

type validationData struct {
	ValidationCode string `json:"validationCode"`
	ValidationURL  string `json:"validationUrl"`
}

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodOptions:
		h.handshake(w, r)
	case http.MethodPost:
		h.deliver(w, r)
	default:
		w.Header().Set("Allow", "POST, OPTIONS")
		h.fail(w, r, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed", r.Method), 0, 0)
	}
}

func (h *Handler) authenticate(r *http.Request) (int, error) {
	err := h.cfg.Secrets.Check(r)
	if err == nil && h.cfg.Tokens != nil {
		err = h.cfg.Tokens.Check(r)
	}
	switch {
	case err == nil:
		return 0, nil
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden, err
	default:
		return http.StatusUnauthorized, err
	}
}

// handshake answers the CloudEvents 1.0 webhook abuse-protection request.
func (h *Handler) handshake(w http.ResponseWriter, r *http.Request) {
	origin := r.Header.Get("WebHook-Request-Origin")
	if origin == "" {
		w.Header().Set("Allow", "POST, OPTIONS")
		w.WriteHeader(http.StatusOK)
		return
	}
	if code, err := h.authenticate(r); err != nil {
		h.fail(w, r, code, err, 0, 0)
		return
	}
	if len(h.cfg.AllowedOrigins) > 0 && !containsFold(h.cfg.AllowedOrigins, origin) {
		h.fail(w, r, http.StatusForbidden, fmt.Errorf("origin %q is not allowed", origin), 0, 0)
		return
	}
	w.Header().Set("WebHook-Allowed-Origin", origin)
	if rate := r.Header.Get("WebHook-Request-Rate"); rate != "" {
		w.Header().Set("WebHook-Allowed-Rate", "*")
	}
	w.Header().Set("Allow", "POST, OPTIONS")
	w.WriteHeader(http.StatusOK)
	h.observe(http.StatusOK, 0, 0)
}

func (h *Handler) deliver(w http.ResponseWriter, r *http.Request) {
	if code, err := h.authenticate(r); err != nil {
		h.fail(w, r, code, err, 0, 0)
		return
	}
	if r.ContentLength > h.cfg.MaxBodyBytes {
		h.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("body of %d bytes exceeds the limit of %d", r.ContentLength, h.cfg.MaxBodyBytes), 0, 0)
		return
	}
	body, err := readBody(w, r, h.cfg.MaxBodyBytes)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Errorf("body exceeds the limit of %d bytes", h.cfg.MaxBodyBytes), 0, 0)
			return
		}
		h.fail(w, r, http.StatusBadRequest, fmt.Errorf("read body: %w", err), 0, 0)
		return
	}
	d, err := Parse(body, h.cfg.Limits)
	if err != nil {
		code := http.StatusBadRequest
		if errors.Is(err, ErrTooLarge) {
			code = http.StatusRequestEntityTooLarge
		}
		h.fail(w, r, code, err, 0, 0)
		return
	}
	// The subscription validation handshake arrives alone.
	if len(d.Events) == 1 && d.Events[0].Type == TypeSubscriptionValidation {
		h.validate(w, r, d.Events[0])
		return
	}
	if len(d.Events) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), h.cfg.StoreTimeout)
		err := h.cfg.Store(ctx, d.Events)
		cancel()
		if errors.Is(err, ErrTooLarge) {
			h.fail(w, r, http.StatusRequestEntityTooLarge, err, 0, len(d.Events))
			return
		}
		if err != nil {
			h.log.ErrorContext(r.Context(), "storing delivery failed; the sender will retry", "events", len(d.Events), "err", err)
			w.Header().Set("Retry-After", retryAfterSeconds(5*time.Second))
			h.fail(w, r, http.StatusServiceUnavailable, errors.New("storage unavailable, retry later"), 0, len(d.Events))
			return
		}
		if h.cfg.AfterStore != nil {
			h.cfg.AfterStore(r)
		}
	}
	if len(d.Rejected) > 0 {
		code := http.StatusBadRequest
		if d.TooLarge() {
			code = http.StatusRequestEntityTooLarge
		}
		h.fail(w, r, code, d.Err(), len(d.Events), len(d.Rejected))
		return
	}
	w.WriteHeader(http.StatusOK)
	h.observe(http.StatusOK, len(d.Events), 0)
}

func (h *Handler) validate(w http.ResponseWriter, r *http.Request, ev Event) {
	var vd validationData
	if err := json.Unmarshal(ev.Data, &vd); err != nil || vd.ValidationCode == "" {
		h.fail(w, r, http.StatusBadRequest, fmt.Errorf("%w: validation event without a validationCode", ErrMalformed), 0, 1)
		return
	}
	h.log.InfoContext(r.Context(), "Event Grid subscription validated", "topic", ev.Source, "event_id", ev.ID)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_ = json.NewEncoder(w).Encode(ValidationResponse{ValidationResponse: vd.ValidationCode})
	h.observe(http.StatusOK, 0, 0)
}

func (h *Handler) fail(w http.ResponseWriter, r *http.Request, code int, err error, accepted, rejected int) {
	level := slog.LevelWarn
	if code >= 500 {
		level = slog.LevelError
	}
	h.log.Log(r.Context(), level, "webhook request refused", "status", code, "remote", r.RemoteAddr, "err", err)
	body := errorBody{Error: err.Error()}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
	h.observe(code, accepted, rejected)
}

func (h *Handler) observe(status, accepted, rejected int) {
	if h.cfg.Observe != nil {
		h.cfg.Observe(status, accepted, rejected)
	}
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if v == "*" || strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

// retryAfterSeconds formats d for a Retry-After header.
func retryAfterSeconds(d time.Duration) string { return strconv.Itoa(int(d.Seconds())) }

// readBody reads the request body within limit, into one buffer of the
// announced size when the sender gave a Content-Length.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	if r.ContentLength <= 0 {
		return io.ReadAll(body)
	}
	buf := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(body, buf); err != nil {
		return nil, err
	}
	// Anything beyond the announced length is an error of the sender.
	var extra [1]byte
	if n, _ := body.Read(extra[:]); n > 0 {
		return nil, errors.New("body longer than its Content-Length")
	}
	return buf, nil
}
