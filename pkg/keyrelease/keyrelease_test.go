package keyrelease_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

var testVM = events.VMKey("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/kr")

func TestSealOpenEverySuite(t *testing.T) {
	suites := []keyrelease.Suite{
		keyrelease.DefaultSuite,
		keyrelease.ClassicSuite,
		{KEM: keyrelease.KEMP256, KDF: keyrelease.KDFHKDFSHA256, AEAD: 0x0003},
		{KEM: 0x0042, KDF: 0x0003, AEAD: 0x0001}, // ML-KEM-1024, HKDF-SHA512, AES-128-GCM
	}
	secret := []byte("the disk key")
	for _, s := range suites {
		t.Run(s.String(), func(t *testing.T) {
			priv, pub, err := s.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			info := keyrelease.Info(testVM, "disk", bytes.Repeat([]byte{1}, 32))
			sealed, err := s.Seal(pub, info, secret)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Open(priv, info, sealed)
			if err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("open = %q, %v", got, err)
			}
			other := keyrelease.Info(testVM, "other", bytes.Repeat([]byte{1}, 32))
			if _, err := s.Open(priv, other, sealed); err == nil {
				t.Fatal("opened under another info")
			}
			priv2, _, _ := s.GenerateKey()
			if _, err := s.Open(priv2, info, sealed); err == nil {
				t.Fatal("opened with another private key")
			}
		})
	}
}

func TestSuiteValidate(t *testing.T) {
	for _, tc := range []struct {
		s    keyrelease.Suite
		want string
	}{
		{keyrelease.Suite{KEM: 0x9999, KDF: 1, AEAD: 2}, "KEM 0x9999"},
		{keyrelease.Suite{KEM: 0x20, KDF: 0x77, AEAD: 2}, "KDF 0x0077"},
		{keyrelease.Suite{KEM: 0x20, KDF: 1, AEAD: 0xffff}, "export-only"},
		{keyrelease.Suite{KEM: 0x20, KDF: 1, AEAD: 0x77}, "AEAD 0x0077"},
	} {
		err := tc.s.Validate()
		if !errors.Is(err, keyrelease.ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.s, err, tc.want)
		}
	}
}

func TestBindingCoversEveryInput(t *testing.T) {
	nonce := bytes.Repeat([]byte{7}, 32)
	_, pub, err := keyrelease.ClassicSuite.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	base := keyrelease.Binding(nonce, keyrelease.ClassicSuite, pub)
	if len(base) != keyrelease.BindingSize {
		t.Fatalf("binding is %d bytes", len(base))
	}
	if !bytes.Equal(base, keyrelease.Binding(bytes.Clone(nonce), keyrelease.ClassicSuite, bytes.Clone(pub))) {
		t.Fatal("binding is not deterministic")
	}
	nonce2 := bytes.Clone(nonce)
	nonce2[31] ^= 1
	pub2 := bytes.Clone(pub)
	pub2[0] ^= 1
	variants := map[string][]byte{
		"nonce":  keyrelease.Binding(nonce2, keyrelease.ClassicSuite, pub),
		"pub":    keyrelease.Binding(nonce, keyrelease.ClassicSuite, pub2),
		"suite":  keyrelease.Binding(nonce, keyrelease.Suite{KEM: 0x20, KDF: 1, AEAD: 1}, pub),
		"shift":  keyrelease.Binding(nonce[:31], keyrelease.ClassicSuite, append([]byte{nonce[31]}, pub...)),
		"nilpub": keyrelease.Binding(nonce, keyrelease.ClassicSuite, nil),
	}
	for name, b := range variants {
		if bytes.Equal(b, base) {
			t.Errorf("changing %s leaves the binding unchanged", name)
		}
	}
}

func validRequest(t testing.TB) keyrelease.ReleaseRequest {
	_, pub, err := keyrelease.DefaultSuite.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return keyrelease.ReleaseRequest{
		VMKey: testVM, KeyName: "disk-key", Nonce: bytes.Repeat([]byte{1}, 32),
		Suite: keyrelease.DefaultSuite, PublicKey: pub, Evidence: json.RawMessage(`{"format":"vigil.evidence/v1"}`),
	}
}

func TestReleaseRequestValidation(t *testing.T) {
	cases := []struct {
		name   string
		mutate func(*keyrelease.ReleaseRequest)
		want   string
	}{
		{"ok", func(*keyrelease.ReleaseRequest) {}, ""},
		{"vm key", func(r *keyrelease.ReleaseRequest) { r.VMKey = "VM.>" }, "vm_key"},
		{"key name empty", func(r *keyrelease.ReleaseRequest) { r.KeyName = "" }, "key_name"},
		{"key name dot", func(r *keyrelease.ReleaseRequest) { r.KeyName = "a.b" }, "key_name"},
		{"key name long", func(r *keyrelease.ReleaseRequest) { r.KeyName = strings.Repeat("k", 128) }, "key_name"},
		{"nonce short", func(r *keyrelease.ReleaseRequest) { r.Nonce = r.Nonce[:16] }, "nonce is 16 bytes"},
		{"no public key", func(r *keyrelease.ReleaseRequest) { r.PublicKey = nil }, "missing public_key"},
		{"bad public key", func(r *keyrelease.ReleaseRequest) { r.PublicKey = r.PublicKey[:40] }, "not a valid key"},
		{"huge public key", func(r *keyrelease.ReleaseRequest) { r.PublicKey = make([]byte, 4096) }, "over the limit"},
		{"no evidence", func(r *keyrelease.ReleaseRequest) { r.Evidence = nil }, "missing evidence"},
		{"evidence not object", func(r *keyrelease.ReleaseRequest) { r.Evidence = json.RawMessage(`"x"`) }, "not a JSON object"},
		{"bad suite", func(r *keyrelease.ReleaseRequest) { r.Suite.AEAD = 0xffff }, "export-only"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := validRequest(t)
			tc.mutate(&r)
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			_, err = keyrelease.ParseReleaseRequest(b)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, keyrelease.ErrInvalidRequest) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if _, err := keyrelease.ParseReleaseRequest(make([]byte, keyrelease.MaxRequestSize+1)); err == nil {
		t.Fatal("oversized request accepted")
	}
}

func FuzzParseReleaseRequest(f *testing.F) {
	good, _ := json.Marshal(validRequest(f))
	f.Add(good)
	f.Add([]byte(`{"vm_key":"x"}`))
	f.Add([]byte(`{"evidence":[1,2,3]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := keyrelease.ParseReleaseRequest(data)
		if err != nil {
			if !errors.Is(err, keyrelease.ErrInvalidRequest) {
				t.Fatalf("error %v does not wrap ErrInvalidRequest", err)
			}
			return
		}
		if r.Validate() != nil || len(r.Evidence) > keyrelease.MaxEvidenceSize {
			t.Fatal("accepted request does not validate")
		}
	})
}

func FuzzParseNonceRequest(f *testing.F) {
	f.Add([]byte(`{"vm_key":"` + testVM + `"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := keyrelease.ParseNonceRequest(data)
		if err == nil && !events.ValidVMKey(r.VMKey) {
			t.Fatal("accepted an invalid vm key")
		}
	})
}

// server is a minimal release service over a real NATS server, enough to
// exercise the client's side of the exchange: it remembers nonces, checks
// that the "evidence" carries the binding and seals the secret.
type server struct {
	nonces map[string]bool
	secret []byte
}

func (s *server) serve(t *testing.T, ctx context.Context, c *bus.Conn) {
	t.Helper()
	if _, err := c.Serve(ctx, events.SubjectKeyguardNonceAll, "", func(_ context.Context, data []byte) ([]byte, error) {
		if _, err := keyrelease.ParseNonceRequest(data); err != nil {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBadRequest, Message: err.Error()}
		}
		n := bytes.Repeat([]byte{byte(len(s.nonces) + 1)}, 32)
		s.nonces[string(n)] = true
		return json.Marshal(keyrelease.NonceResponse{Nonce: n, ExpiresAt: time.Now().Add(time.Minute)})
	}, bus.WithServeConcurrency(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Serve(ctx, events.SubjectKeyguardReleaseAll, "", func(_ context.Context, data []byte) ([]byte, error) {
		r, err := keyrelease.ParseReleaseRequest(data)
		if err != nil {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBadRequest, Message: err.Error()}
		}
		if !s.nonces[string(r.Nonce)] {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBadNonce}
		}
		delete(s.nonces, string(r.Nonce))
		var ev struct {
			Nonce []byte `json:"nonce"`
			Extra []byte `json:"extra"`
		}
		if err := json.Unmarshal(r.Evidence, &ev); err != nil || !bytes.Equal(ev.Nonce, r.Nonce) || !bytes.Equal(ev.Extra, keyrelease.Binding(r.Nonce, r.Suite, r.PublicKey)) {
			return nil, &bus.ReplyError{Code: keyrelease.CodeBindingMismatch}
		}
		sealed, err := r.Suite.Seal(r.PublicKey, keyrelease.Info(r.VMKey, r.KeyName, r.Nonce), s.secret)
		if err != nil {
			return nil, err
		}
		return json.Marshal(keyrelease.ReleaseResponse{VMKey: r.VMKey, KeyName: r.KeyName, Version: 3, Suite: r.Suite, Sealed: sealed, ReleasedAt: time.Now()})
	}, bus.WithServeConcurrency(1)); err != nil {
		t.Fatal(err)
	}
}

func TestClientRelease(t *testing.T) {
	srv := natstest.Start(t)
	c, err := bus.Connect(context.Background(), bus.Config{URL: srv.URL(), Name: t.Name()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := &server{nonces: map[string]bool{}, secret: []byte("s3cret")}
	s.serve(t, ctx, c)

	honest := keyrelease.AttesterFunc(func(_ context.Context, nonce, extra []byte) ([]byte, error) {
		return json.Marshal(map[string]any{"format": "vigil.evidence/v1", "nonce": nonce, "extra": extra})
	})
	for _, suite := range []keyrelease.Suite{{}, keyrelease.ClassicSuite} {
		cl := &keyrelease.Client{Requester: c, VMKey: testVM, Attester: honest, Suite: suite}
		got, err := cl.Release(ctx, "disk-key")
		if err != nil {
			t.Fatal(err)
		}
		if string(got.Secret) != "s3cret" || got.Version != 3 || got.KeyName != "disk-key" {
			t.Fatalf("released %+v", got)
		}
	}

	// An attester that quotes over the bare nonce instead of the binding is
	// refused, and the code comes through.
	lazy := keyrelease.AttesterFunc(func(_ context.Context, nonce, _ []byte) ([]byte, error) {
		return json.Marshal(map[string]any{"format": "vigil.evidence/v1", "nonce": nonce, "extra": nonce})
	})
	cl := &keyrelease.Client{Requester: c, VMKey: testVM, Attester: lazy}
	_, err = cl.Release(ctx, "disk-key")
	if code := keyrelease.RefusalCode(err); code != keyrelease.CodeBindingMismatch {
		t.Fatalf("err = %v (code %q), want %s", err, code, keyrelease.CodeBindingMismatch)
	}

	failing := keyrelease.AttesterFunc(func(context.Context, []byte, []byte) ([]byte, error) { return nil, errors.New("no tpm") })
	cl = &keyrelease.Client{Requester: c, VMKey: testVM, Attester: failing}
	if _, err := cl.Release(ctx, "disk-key"); err == nil || !strings.Contains(err.Error(), "no tpm") {
		t.Fatalf("err = %v", err)
	}
	if _, err := (&keyrelease.Client{Requester: c, VMKey: testVM, Attester: honest}).Release(ctx, "bad.name"); err == nil {
		t.Fatal("bad key name accepted")
	}
}
