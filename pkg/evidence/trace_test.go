package evidence

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestVerifySpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	defer otel.SetTracerProvider(prev)

	raw, _ := loadFixture(t, "snp-milan-a.bundle.json")
	v := offlineVerifier(t)
	if _, err := v.Verify(context.Background(), raw, Expect{Binding: BindRawNonce}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), []byte("{"), Expect{}); err == nil {
		t.Fatal("bad bundle accepted")
	}
	spans := rec.Ended()
	if len(spans) != 2 || spans[0].Name() != "evidence.Verify" {
		t.Fatalf("spans %v", spans)
	}
	attrs := map[string]string{}
	for _, a := range spans[0].Attributes() {
		attrs[string(a.Key)] = a.Value.String()
	}
	if attrs["vigil.platform"] != PlatformAzureSNP || attrs["vigil.genuine"] != "true" {
		t.Fatalf("attributes %v", attrs)
	}
	if spans[1].Status().Code.String() != "Error" {
		t.Fatalf("bad bundle span status %v", spans[1].Status())
	}
}
