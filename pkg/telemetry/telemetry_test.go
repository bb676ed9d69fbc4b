package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// clearOTelEnv makes a test independent of the OTEL_* variables of the
// shell that runs it.
func clearOTelEnv(t *testing.T) {
	t.Helper()
	for _, k := range []string{
		"OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES",
		"OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_TRACES_EXPORTER",
		"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
		"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
		"OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_PROPAGATORS",
	} {
		t.Setenv(k, "")
	}
}

func setup(t *testing.T, cfg Config) *Telemetry {
	t.Helper()
	tel, err := Setup(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Setup: %v", err)
	}
	t.Cleanup(func() { _ = tel.Shutdown(context.Background()) })
	return tel
}

// collector is an httptest OTLP/HTTP endpoint that decodes what it gets.
type collector struct {
	mu       sync.Mutex
	requests []*coltracepb.ExportTraceServiceRequest
	headers  []http.Header
	paths    []string
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	c.requests = append(c.requests, &req)
	c.headers = append(c.headers, r.Header.Clone())
	c.paths = append(c.paths, r.URL.Path)
	c.mu.Unlock()
	resp, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(resp)
}

func TestOTLPExportReachesCollector(t *testing.T) {
	clearOTelEnv(t)
	col := &collector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)
	t.Setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-vigil-test=yes")
	t.Setenv("OTEL_SERVICE_NAME", "vigil-from-env")
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")

	tel, err := Setup(context.Background(), Config{Service: "vigil-default", Version: "1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	if !tel.TracesExported {
		t.Fatal("TracesExported = false with OTEL_EXPORTER_OTLP_ENDPOINT set")
	}
	_, span := tel.Tracer("test").Start(context.Background(), "attest vm")
	span.End()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tel.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}

	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.requests) == 0 {
		t.Fatal("collector received nothing")
	}
	if col.paths[0] != "/v1/traces" {
		t.Errorf("path = %q, want /v1/traces", col.paths[0])
	}
	if got := col.headers[0].Get("X-Vigil-Test"); got != "yes" {
		t.Errorf("OTEL_EXPORTER_OTLP_HEADERS not sent: x-vigil-test = %q", got)
	}
	var names []string
	res := map[string]string{}
	for _, req := range col.requests {
		for _, rs := range req.GetResourceSpans() {
			for _, kv := range rs.GetResource().GetAttributes() {
				res[kv.GetKey()] = kv.GetValue().GetStringValue()
			}
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					names = append(names, s.GetName())
				}
			}
		}
	}
	if len(names) != 1 || names[0] != "attest vm" {
		t.Errorf("spans = %q, want [attest vm]", names)
	}
	for k, want := range map[string]string{
		"service.name":           "vigil-from-env", // the environment wins over Config.Service
		"service.version":        "1.2.3",
		"deployment.environment": "test",
	} {
		if res[k] != want {
			t.Errorf("resource %s = %q, want %q", k, res[k], want)
		}
	}
}

func TestTracesEndpointAlone(t *testing.T) {
	clearOTelEnv(t)
	col := &collector{}
	srv := httptest.NewServer(col)
	defer srv.Close()
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", srv.URL+"/custom/traces")
	tel, err := Setup(context.Background(), Config{Service: "vigil-test"})
	if err != nil {
		t.Fatal(err)
	}
	_, span := tel.Tracer("test").Start(context.Background(), "one")
	span.End()
	if err := tel.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.mu.Lock()
	defer col.mu.Unlock()
	if len(col.paths) == 0 || col.paths[0] != "/custom/traces" {
		t.Fatalf("paths = %q, want [/custom/traces]", col.paths)
	}
}

func TestNoEndpointNoExporter(t *testing.T) {
	clearOTelEnv(t)
	mem := tracetest.NewInMemoryExporter()
	tel := setup(t, Config{Service: "vigil-test", SpanExporter: mem})
	if tel.TracesExported {
		t.Fatal("TracesExported = true without an endpoint")
	}
	ctx, span := tel.Tracer("test").Start(context.Background(), "local")
	if !span.SpanContext().IsSampled() {
		t.Fatal("span not sampled under the default sampler")
	}
	// The propagator writes W3C trace context.
	h := propagation.MapCarrier{}
	tel.Propagator.Inject(ctx, h)
	if tp := h.Get("traceparent"); !strings.HasPrefix(tp, "00-"+span.SpanContext().TraceID().String()) {
		t.Errorf("traceparent = %q", tp)
	}
	span.End()
	if got := len(mem.GetSpans()); got != 1 {
		t.Fatalf("in-memory exporter has %d spans, want 1", got)
	}
	res := mem.GetSpans()[0].Resource
	if v, _ := res.Set().Value("service.name"); v.AsString() != "vigil-test" {
		t.Errorf("resource = %v, want service.name vigil-test", res)
	}
}

func TestSamplerFromEnv(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_TRACES_SAMPLER", "always_off")
	mem := tracetest.NewInMemoryExporter()
	tel := setup(t, Config{Service: "vigil-test", SpanExporter: mem})
	_, span := tel.Tracer("test").Start(context.Background(), "dropped")
	if span.SpanContext().IsSampled() {
		t.Error("span sampled under always_off")
	}
	span.End()
	if n := len(mem.GetSpans()); n != 0 {
		t.Errorf("%d spans exported under always_off", n)
	}
}

func TestSDKDisabled(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_SDK_DISABLED", "true")
	tel := setup(t, Config{Service: "vigil-test"})
	_, span := tel.Tracer("test").Start(context.Background(), "noop")
	if span.SpanContext().IsValid() {
		t.Error("OTEL_SDK_DISABLED=true still creates real spans")
	}
	span.End()
}

func TestReadEnvErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string // the variable the error must name; "" = no error
	}{
		{"empty", nil, ""},
		{"endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ""},
		{"ratio", map[string]string{"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, ""},
		{"exporter none with endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, ""},
		{"bad sampler", map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"},
		{"bad ratio", map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"},
		{"ratio not a number", map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"},
		{"grpc", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"},
		{"traces protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, ""},
		{"bad exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"},
		{"bad disabled", map[string]string{"OTEL_SDK_DISABLED": "maybe"}, "OTEL_SDK_DISABLED"},
		{"bad propagator", map[string]string{"OTEL_PROPAGATORS": "tracecontext,b3"}, "OTEL_PROPAGATORS"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := readEnv(func(k string) string { return tc.env[k] })
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.want != "" && err == nil:
				t.Fatalf("no error, want one naming %s", tc.want)
			case tc.want != "" && (!errors.Is(err, ErrBadEnv) || !strings.Contains(err.Error(), tc.want+"=")):
				t.Fatalf("error %q does not name %s or wrap ErrBadEnv", err, tc.want)
			}
		})
	}
}

func TestBadResourceAttributes(t *testing.T) {
	clearOTelEnv(t)
	t.Setenv("OTEL_RESOURCE_ATTRIBUTES", "no-equals-sign")
	_, err := Setup(context.Background(), Config{Service: "vigil-test"})
	if err == nil || !strings.Contains(err.Error(), "OTEL_RESOURCE_ATTRIBUTES") {
		t.Fatalf("err = %v, want one naming OTEL_RESOURCE_ATTRIBUTES", err)
	}
}

func TestMetricsExposeCounter(t *testing.T) {
	clearOTelEnv(t)
	tel := setup(t, Config{Service: "vigil-test"})
	c, err := tel.Meter("github.com/vigil-cc/vigil/pkg/telemetry/test").Int64Counter("vigil.test.verdicts",
		metric.WithDescription("Verdicts issued"))
	if err != nil {
		t.Fatal(err)
	}
	c.Add(context.Background(), 3)
	c.Add(context.Background(), 4)

	srv, err := Listen("127.0.0.1:0", tel, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()

	body := get(t, srv.URL()+"/metrics", http.StatusOK)
	if !strings.Contains(body, "\nvigil_test_verdicts_total{") || !strings.Contains(body, "} 7\n") {
		t.Fatalf("/metrics lacks vigil_test_verdicts_total 7:\n%s", grepLines(body, "vigil_test"))
	}
	if !strings.Contains(body, "go_goroutines") {
		t.Error("/metrics lacks the Go runtime metrics")
	}
	if !strings.Contains(body, `service_name="vigil-test"`) {
		t.Error("/metrics target_info lacks service_name")
	}
}

func get(t *testing.T, url string, wantStatus int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != wantStatus {
		t.Fatalf("GET %s: status %d, want %d: %s", url, resp.StatusCode, wantStatus, b)
	}
	return string(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
