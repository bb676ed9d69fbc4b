package sim

import (
	"bytes"
	"testing"

	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/evidence"
	"github.com/vigil-cc/vigil/pkg/evidence/appraise"
	"github.com/vigil-cc/vigil/pkg/evidence/tpmquote"
)

// The templates must be in use (or answers cost what they did before) and
// must give exactly the bytes of the general encoders, for every platform,
// option and hardware fault, and for extraData of any length.
func TestAnswerTemplates(t *testing.T) {
	auth, err := NewAuthority(AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	configs := []struct {
		name string
		cfg  VMConfig
	}{
		{"snp", VMConfig{Platform: evidence.PlatformAzureSNP, AK: AKECDSAP256}},
		{"snp rsa event log", VMConfig{Platform: evidence.PlatformAzureSNP, AK: AKRSA2048, EventLog: true}},
		{"snp genoa no vcek", VMConfig{Platform: evidence.PlatformAzureSNP, ProductLine: "Genoa", AK: AKECDSAP256, OmitVCEK: true}},
		{"tdx", VMConfig{Platform: evidence.PlatformAzureTDX, AK: AKECDSAP256, EventLog: true, ConsoleEnabled: true, SecureBootDisabled: true}},
	}
	faults := []Faults{{}, {DebugPolicy: true, UnexpectedBoot: true}, {WrongVMID: true, BrokenSignature: true}, {StaleNonce: true, BrokenQuote: true}}
	for _, c := range configs {
		vm, err := auth.NewVM(c.cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range faults {
			vm.SetFaults(f)
			for _, extra := range [][]byte{nil, {}, []byte("x"), bytes.Repeat([]byte{0xa5}, 64)} {
				ch := Challenge{Nonce: evidence.NewNonce(), ExtraData: extra}
				b, hw, err := vm.evidence(ch)
				if err != nil {
					t.Fatalf("%s %+v: %v", c.name, f, err)
				}
				if hw.quote == nil || hw.wire == nil {
					t.Fatalf("%s %+v: templates not in use (quote %v, wire %v)", c.name, f, hw.quote != nil, hw.wire != nil)
				}
				want, err := b.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				if got := hw.wire.encode(b); !bytes.Equal(got, want) {
					t.Fatalf("%s %+v: template bundle\n%s\nwant\n%s", c.name, f, got, want)
				}
				quoted := extra
				if quoted == nil {
					quoted = ch.Nonce
				}
				if f.StaleNonce {
					continue // quotes the previous challenge's extraData
				}
				wantQuote, err := tpmquote.Build(vm.quoteParams(hw, quoted, 123456789))
				if err != nil {
					t.Fatal(err)
				}
				if got := hw.quote.build(quoted, 123456789); !bytes.Equal(got, wantQuote) {
					t.Fatalf("%s %+v: template quote %x, want %x", c.name, f, got, wantQuote)
				}
			}
		}
	}
}

// An answer is what Marshal gives for the bundle and verifies like one.
func TestAnswerVerifies(t *testing.T) {
	auth, err := NewAuthority(AuthorityConfig{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := evidence.NewVerifier(evidence.Config{TestRoots: auth.TrustRoots(), Offline: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX} {
		vm, err := auth.NewVM(VMConfig{Platform: platform, AK: AKECDSAP256, EventLog: true})
		if err != nil {
			t.Fatal(err)
		}
		nonce := evidence.NewNonce()
		raw, err := vm.Answer(Challenge{Nonce: nonce})
		if err != nil {
			t.Fatal(err)
		}
		b, err := evidence.ParseBundle(raw)
		if err != nil {
			t.Fatal(err)
		}
		again, err := b.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, raw) {
			t.Fatalf("%s: answer does not round-trip through ParseBundle and Marshal", platform)
		}
		verdict, _, err := appraise.Evidence(t.Context(), v, raw, evidence.Expect{Nonce: nonce, VMID: vm.VMID(), VMKey: vm.VMKey()}, auth.Policy(), appraise.Options{})
		if err != nil || verdict.Status != events.VerdictAffirming {
			t.Fatalf("%s: verdict %s %v, err %v", platform, verdict.Status, verdict.Reasons, err)
		}
	}
}

// BenchmarkAnswer compares answers from the boot-time templates with the
// same answers built by the general encoders (tpmquote.Build and
// Bundle.Marshal per challenge).
func BenchmarkAnswer(b *testing.B) {
	auth, err := NewAuthority(AuthorityConfig{})
	if err != nil {
		b.Fatal(err)
	}
	for _, platform := range []string{evidence.PlatformAzureSNP, evidence.PlatformAzureTDX} {
		for _, templates := range []bool{true, false} {
			vm, err := auth.NewVM(VMConfig{Platform: platform, AK: AKECDSAP256, EventLog: true})
			if err != nil {
				b.Fatal(err)
			}
			name := platform + "/template"
			if !templates {
				name = platform + "/general"
				hw, err := vm.hardware()
				if err != nil {
					b.Fatal(err)
				}
				hw.quote, hw.wire = nil, nil
			}
			nonce := evidence.NewNonce()
			b.Run(name, func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					if _, err := vm.Answer(Challenge{Nonce: nonce}); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
