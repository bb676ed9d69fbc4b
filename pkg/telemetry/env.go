package telemetry

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// ErrBadEnv is wrapped by every error about an OTEL_* variable.
var ErrBadEnv = errors.New("invalid OpenTelemetry environment variable")

// settings are the parts of the OTEL_* environment that Setup decides on;
// the OTLP exporter reads its own connection settings.
type settings struct {
	sdkDisabled bool
	otlpTraces  bool
	sampler     sdktrace.Sampler
	propagator  propagation.TextMapPropagator
}

func lookupEnv(key string) string { return os.Getenv(key) }

func badEnv(key, val, why string) error {
	return fmt.Errorf("telemetry: %w: %s=%q: %s", ErrBadEnv, key, val, why)
}

// readEnv interprets the environment seen through get.
func readEnv(get func(string) string) (settings, error) {
	var s settings
	if v := strings.TrimSpace(get("OTEL_SDK_DISABLED")); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return s, badEnv("OTEL_SDK_DISABLED", v, "want true or false")
		}
		s.sdkDisabled = b
	}

	exp, err := tracesExporter(get)
	if err != nil {
		return s, err
	}
	s.otlpTraces = exp

	s.sampler, err = sampler(get)
	if err != nil {
		return s, err
	}
	s.propagator, err = propagators(get)
	if err != nil {
		return s, err
	}
	return s, nil
}

// tracesExporter reports whether spans go to an OTLP/HTTP collector.
func tracesExporter(get func(string) string) (bool, error) {
	endpoint := strings.TrimSpace(get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) != "" ||
		strings.TrimSpace(get("OTEL_EXPORTER_OTLP_ENDPOINT")) != ""
	otlp := false
	switch v := strings.TrimSpace(get("OTEL_TRACES_EXPORTER")); strings.ToLower(v) {
	case "":
		otlp = endpoint
	case "otlp":
		otlp = true
	case "none":
		otlp = false
	default:
		return false, badEnv("OTEL_TRACES_EXPORTER", v, "supported: otlp, none")
	}
	if !otlp {
		return false, nil
	}
	for _, key := range []string{"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"} {
		v := strings.TrimSpace(get(key))
		if v == "" {
			continue
		}
		if v != "http/protobuf" {
			return false, badEnv(key, v, "only http/protobuf is supported (OTLP/HTTP, usually port 4318)")
		}
		break // the signal-specific variable wins
	}
	return true, nil
}

// sampler follows the OpenTelemetry specification of OTEL_TRACES_SAMPLER;
// unset means parentbased_always_on.
func sampler(get func(string) string) (sdktrace.Sampler, error) {
	name := strings.ToLower(strings.TrimSpace(get("OTEL_TRACES_SAMPLER")))
	arg := strings.TrimSpace(get("OTEL_TRACES_SAMPLER_ARG"))
	ratio := func() (sdktrace.Sampler, error) {
		if arg == "" {
			return sdktrace.TraceIDRatioBased(1), nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return nil, badEnv("OTEL_TRACES_SAMPLER_ARG", arg, "want a ratio between 0 and 1")
		}
		return sdktrace.TraceIDRatioBased(r), nil
	}
	switch name {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		return ratio()
	case "parentbased_traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(r), nil
	default:
		return nil, badEnv("OTEL_TRACES_SAMPLER", name,
			"supported: always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio")
	}
}

// propagators follows OTEL_PROPAGATORS; unset means W3C trace context and
// baggage.
func propagators(get func(string) string) (propagation.TextMapPropagator, error) {
	v := strings.TrimSpace(get("OTEL_PROPAGATORS"))
	if v == "" {
		return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{}), nil
	}
	var ps []propagation.TextMapPropagator
	for _, p := range strings.Split(v, ",") {
		switch strings.ToLower(strings.TrimSpace(p)) {
		case "tracecontext":
			ps = append(ps, propagation.TraceContext{})
		case "baggage":
			ps = append(ps, propagation.Baggage{})
		case "none":
		default:
			return nil, badEnv("OTEL_PROPAGATORS", v, "supported: tracecontext, baggage, none")
		}
	}
	return propagation.NewCompositeTextMapPropagator(ps...), nil
}
