package enroll_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/enroll"
	"github.com/vigil-cc/vigil/pkg/keyrelease"
)

const vm = "abcdefghijklmnopqrstuvwxyz"

// TestBindingVectors pins the binding's encoding (checked against an
// independent implementation: Python's hashlib over the documented
// layout).
func TestBindingVectors(t *testing.T) {
	n := make([]byte, 32)
	for i := range n {
		n[i] = byte(i)
	}
	for _, tc := range []struct {
		vm    string
		nonce []byte
		pub   string
		want  string
	}{
		{vm, n, "UAAAA", "8c71195653362875865a0c09bc2f4ddc72540e0054ca3e8eada07433cddce2c2"},
		{"", nil, "", "48d788775ce17349d24e414570cea45058908b5517db8831263ca68a2069903e"},
	} {
		if got := hex.EncodeToString(enroll.Binding(tc.vm, tc.nonce, tc.pub)); got != tc.want {
			t.Errorf("Binding(%q, %x, %q) = %s, want %s", tc.vm, tc.nonce, tc.pub, got, tc.want)
		}
	}
	// Each field is length-prefixed: moving bytes between fields changes
	// the binding; and it is not the key release binding of the same
	// nonce.
	if bytes.Equal(enroll.Binding("ab", []byte("c"), "d"), enroll.Binding("a", []byte("bc"), "d")) {
		t.Fatal("fields are not separated")
	}
	if bytes.Equal(enroll.Binding(vm, n, "U"), keyrelease.Binding(n, keyrelease.DefaultSuite, []byte("U"))) {
		t.Fatal("the enrollment binding equals a release binding")
	}
}

func userPub(t testing.TB) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return pub
}

func TestParseRequest(t *testing.T) {
	pub := userPub(t)
	nonce := bytes.Repeat([]byte{1}, enroll.NonceSize)
	valid := enroll.Request{VMKey: vm, Nonce: nonce, PublicKey: pub, Evidence: json.RawMessage(`{"version":"vigil.evidence/v1"}`)}
	enc := func(f func(*enroll.Request)) []byte {
		r := valid
		f(&r)
		b, _ := json.Marshal(r)
		return b
	}
	for _, tc := range []struct {
		name string
		data []byte
		ok   bool
	}{
		{"valid", enc(func(*enroll.Request) {}), true},
		{"bad VM key", enc(func(r *enroll.Request) { r.VMKey = "ABC" }), false},
		{"short nonce", enc(func(r *enroll.Request) { r.Nonce = nonce[:16] }), false},
		{"account key, not a user key", enc(func(r *enroll.Request) { r.PublicKey = "A" + pub[1:] }), false},
		{"seed as public key", enc(func(r *enroll.Request) { r.PublicKey = "SU" + pub[2:] }), false},
		{"no evidence", enc(func(r *enroll.Request) { r.Evidence = nil }), false},
		{"evidence not an object", enc(func(r *enroll.Request) { r.Evidence = json.RawMessage(`[1]`) }), false},
		{"unknown field", []byte(`{"vm_key":"` + vm + `","admin":true}`), false},
		{"trailing data", append(enc(func(*enroll.Request) {}), []byte(`{}`)...), false},
		{"too large", bytes.Repeat([]byte(" "), enroll.MaxRequestSize+1), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := enroll.ParseRequest(tc.data)
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %t", err, tc.ok)
			}
			if err != nil && !errors.Is(err, enroll.ErrInvalidRequest) {
				t.Fatalf("error %v does not wrap ErrInvalidRequest", err)
			}
		})
	}
}

func TestParseNonceRequest(t *testing.T) {
	for _, tc := range []struct {
		name string
		data string
		ok   bool
	}{
		{"valid", `{"vm_key":"` + vm + `"}`, true},
		{"not a VM key", `{"vm_key":"../x"}`, false},
		{"unknown field", `{"vm_key":"` + vm + `","x":1}`, false},
		{"too large", `{"vm_key":"` + strings.Repeat("a", enroll.MaxNonceRequestSize) + `"}`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := enroll.ParseNonceRequest([]byte(tc.data))
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok %t", err, tc.ok)
			}
			if err != nil && !errors.Is(err, enroll.ErrInvalidRequest) {
				t.Fatalf("error %v does not wrap ErrInvalidRequest", err)
			}
		})
	}
}

// FuzzParseRequest: any input is parsed or refused, never accepted
// invalid.
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte(`{"vm_key":"` + vm + `","nonce":"AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=","public_key":"UAAAA","evidence":{}}`))
	f.Add([]byte(`{"vm_key":"` + vm + `"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := enroll.ParseRequest(data)
		if err == nil && r.Validate() != nil {
			t.Fatal("accepted an invalid request")
		}
		if _, err := enroll.ParseNonceRequest(data); err == nil && len(data) > enroll.MaxNonceRequestSize {
			t.Fatal("accepted an oversized nonce request")
		}
	})
}

// keyguardFake answers the two paths as keyguard would, with issue making
// the JWT for a request.
func keyguardFake(t *testing.T, issue func(enroll.Request) (int, any)) *httptest.Server {
	t.Helper()
	nonce := bytes.Repeat([]byte{9}, enroll.NonceSize)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+enroll.PathNonce, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if _, err := enroll.ParseNonceRequest(b); err != nil {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeBadRequest, "%v", err))
			return
		}
		enroll.WriteJSON(w, http.StatusOK, enroll.NonceResponse{Nonce: nonce, ExpiresAt: time.Now().Add(time.Minute)})
	})
	mux.HandleFunc("POST "+enroll.PathEnroll, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		req, err := enroll.ParseRequest(b)
		if err != nil {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeBadRequest, "%v", err))
			return
		}
		if !bytes.Equal(req.Nonce, nonce) {
			enroll.WriteRefusal(w, enroll.Refuse(enroll.CodeBadNonce, "nonce"))
			return
		}
		status, v := issue(req)
		if ref, ok := v.(*enroll.Refusal); ok {
			enroll.WriteRefusal(w, ref)
			return
		}
		enroll.WriteJSON(w, status, v)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// userJWT signs a user JWT for pub named name expiring at exp.
func userJWT(t *testing.T, pub, name string, exp time.Time) string {
	t.Helper()
	acc, _ := nkeys.CreateAccount()
	uc := jwt.NewUserClaims(pub)
	uc.Name = name
	if !exp.IsZero() {
		uc.Expires = exp.Unix()
	}
	tok, err := uc.Encode(acc)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestClientChecksTheAnswer: the client quotes the binding of the nonce
// it got and its key, and accepts only a JWT for its key and VM that
// expires in the future; refusals come back as *Refusal with Retry-After.
func TestClientChecksTheAnswer(t *testing.T) {
	pub := userPub(t)
	var quoted []byte
	att := keyrelease.AttesterFunc(func(_ context.Context, nonce, extra []byte) ([]byte, error) {
		quoted = extra
		return []byte(`{"nonce":"x"}`), nil
	})
	future := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name  string
		issue func(enroll.Request) (int, any)
		code  string // "" success, "-" another error
	}{
		{"good", func(r enroll.Request) (int, any) {
			return 200, enroll.Response{VMKey: vm, JWT: userJWT(t, r.PublicKey, vm, future)}
		}, ""},
		{"JWT for another key", func(r enroll.Request) (int, any) {
			return 200, enroll.Response{VMKey: vm, JWT: userJWT(t, userPub(t), vm, future)}
		}, "-"},
		{"JWT for another VM", func(r enroll.Request) (int, any) {
			return 200, enroll.Response{VMKey: vm, JWT: userJWT(t, r.PublicKey, "zzzzzzzzzzzzzzzzzzzzzzzzzz", future)}
		}, "-"},
		{"JWT that never expires", func(r enroll.Request) (int, any) {
			return 200, enroll.Response{VMKey: vm, JWT: userJWT(t, r.PublicKey, vm, time.Time{})}
		}, "-"},
		{"expired JWT", func(r enroll.Request) (int, any) {
			return 200, enroll.Response{VMKey: vm, JWT: userJWT(t, r.PublicKey, vm, time.Now().Add(-time.Minute))}
		}, "-"},
		{"not a JWT", func(r enroll.Request) (int, any) { return 200, enroll.Response{VMKey: vm, JWT: "x.y.z"} }, "-"},
		{"refused", func(enroll.Request) (int, any) {
			return 0, &enroll.Refusal{Status: 429, Code: enroll.CodeRateLimited, Message: "slow down", RetryAfter: 3 * time.Second}
		}, enroll.CodeRateLimited},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := keyguardFake(t, tc.issue)
			c := &enroll.Client{URL: srv.URL, VMKey: vm, Attester: att}
			cred, err := c.Enroll(context.Background(), pub)
			switch {
			case tc.code == "" && err != nil:
				t.Fatal(err)
			case tc.code == "":
				if cred.ExpiresAt.Unix() != future.Unix() {
					t.Fatalf("expires %s, want %s", cred.ExpiresAt, future)
				}
				if !bytes.Equal(quoted, enroll.Binding(vm, bytes.Repeat([]byte{9}, enroll.NonceSize), pub)) {
					t.Fatal("the quote did not carry the binding")
				}
			case err == nil:
				t.Fatal("accepted")
			case tc.code == "-":
				if enroll.RefusalCode(err) != "" {
					t.Fatalf("a bad answer reported as a refusal: %v", err)
				}
			default:
				var ref *enroll.Refusal
				if !errors.As(err, &ref) || ref.Code != tc.code || ref.RetryAfter != 3*time.Second || !strings.Contains(err.Error(), "slow down") {
					t.Fatalf("refusal %#v (%v)", ref, err)
				}
			}
		})
	}
}
