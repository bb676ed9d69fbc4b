package bus_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nkeys"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/busauth"
	"github.com/vigil-cc/vigil/pkg/events"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// TestConnectWithUserJWTAndSeed: in operator mode a service connects with
// its user JWT and nkey seed held in memory (or a JWT its JWTSource
// supplies at each connect) and its own inbox prefix; JetStream publishes and requests
// work, since their replies come to the prefix its permissions allow. The
// same connection with the default prefix cannot hear its replies.
func TestConnectWithUserJWTAndSeed(t *testing.T) {
	set, err := busauth.Init(busauth.Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.StartOperator(t, set)
	srv.JetStream() // provisioned by the administrator
	creds, err := set.Creds(busauth.AttestWorker)
	if err != nil {
		t.Fatal(err)
	}
	agent, err := set.AgentCreds("aaaaaaaaaaaaaaaaaaaaaaaaaa", 0)
	if err != nil {
		t.Fatal(err)
	}
	ac, err := bus.Connect(ctxT(t), bus.Config{URL: srv.URL(), UserJWT: agent.JWT, NKeySeed: agent.Seed, InboxPrefix: agent.InboxPrefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ac.Close() })
	if _, err := ac.Serve(ctxT(t), events.ChallengeSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa"), "", func(context.Context, []byte) ([]byte, error) {
		return []byte(`"bundle"`), nil
	}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	for _, tc := range []struct {
		name string
		cfg  bus.Config
	}{
		{"JWT and seed", bus.Config{UserJWT: creds.JWT, NKeySeed: creds.Seed}},
		{"JWT source", bus.Config{JWTSource: jwtSource(func() (string, error) { calls.Add(1); return creds.JWT, nil }), NKeySeed: creds.Seed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.URL, cfg.Name, cfg.InboxPrefix = srv.URL(), "attest-worker", creds.InboxPrefix
			c, err := bus.Connect(ctxT(t), cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if !strings.HasPrefix(c.NC.NewInbox(), creds.InboxPrefix+".") {
				t.Fatalf("inbox %s", c.NC.NewInbox())
			}
			if _, err := c.PublishEvent(ctxT(t), events.VerdictSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.TypeVerdict, "test", map[string]string{}); err != nil {
				t.Fatalf("publish: %v", err)
			}
			var bundle string
			if err := c.Request(ctxT(t), events.ChallengeSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.Challenge{}, &bundle); err != nil || bundle != "bundle" {
				t.Fatalf("challenge: %q, %v", bundle, err)
			}
		})
	}
	if calls.Load() == 0 {
		t.Error("the JWT source was not asked")
	}
	// Without its prefix the service hears no answer.
	c, err := bus.Connect(ctxT(t), bus.Config{URL: srv.URL(), UserJWT: creds.JWT, NKeySeed: creds.Seed})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := c.Request(ctx, events.ChallengeSubject("aaaaaaaaaaaaaaaaaaaaaaaaaa"), events.Challenge{}, nil); err == nil {
		t.Fatal("a request without the inbox prefix was answered")
	}
}

// TestUserPasswordAndTokenNotDisclosed: a user and password, or a token,
// given in the configuration authenticate; when the server refuses them,
// or the configuration is printed or logged, no credential shows.
func TestUserPasswordAndTokenNotDisclosed(t *testing.T) {
	const password, token = "pa55-s3cret-word", "t0ken-s3cret"
	seed := newSeed(t)
	users := natstest.StartConfigured(t, `authorization { users: [ {user: svc, password: "`+password+`"} ] }`)
	tokens := natstest.StartConfigured(t, `authorization { token: "`+token+`" }`)
	var logs lockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	for _, tc := range []struct {
		name string
		cfg  bus.Config
		ok   bool
	}{
		{"user and password", bus.Config{URL: users.URL(), User: "svc", Password: password}, true},
		{"wrong password", bus.Config{URL: users.URL(), User: "svc", Password: password + "x"}, false},
		{"token", bus.Config{URL: tokens.URL(), Token: token}, true},
		{"wrong token", bus.Config{URL: tokens.URL(), Token: token + "x"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Logger = log
			c, err := bus.Connect(ctxT(t), tc.cfg)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if err := c.NC.Flush(); err != nil {
					t.Fatal(err)
				}
				_ = c.Close()
				return
			}
			if err == nil {
				_ = c.Close()
				t.Fatal("connected")
			}
			if !errors.Is(err, bus.ErrConnect) {
				t.Fatalf("error %v", err)
			}
			for _, s := range []string{password, token} {
				if strings.Contains(err.Error(), s) {
					t.Fatalf("error discloses a credential: %v", err)
				}
			}
		})
	}
	cfg := bus.Config{URL: "nats://127.0.0.1:1", User: "svc", Password: password, Token: token, UserJWT: "eyJ.x.y", NKeySeed: seed}
	shown := fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg)
	log.Info("config", "cfg", cfg)
	for _, s := range []string{password, token, seed, "eyJ.x.y"} {
		if strings.Contains(shown, s) || strings.Contains(logs.String(), s) {
			t.Fatalf("a credential is shown: %s\n%s", shown, logs.String())
		}
	}
}

// TestConflictingCredentialsRefused: one way to authenticate, complete,
// or Connect refuses before connecting, quoting no credential.
func TestConflictingCredentialsRefused(t *testing.T) {
	const secret = "s3cret-value"
	seed := newSeed(t)
	for _, tc := range []struct {
		name string
		cfg  bus.Config
		want error
	}{
		{"token and password", bus.Config{User: "u", Password: secret, Token: secret}, bus.ErrConflictingCredentials},
		{"URL credentials and a token", bus.Config{URL: "nats://u:" + secret + "@127.0.0.1:1", Token: secret}, bus.ErrConflictingCredentials},
		{"creds file and JWT", bus.Config{CredsFile: "/nonexistent", UserJWT: "x", NKeySeed: seed}, bus.ErrConflictingCredentials},
		{"JWT without seed", bus.Config{UserJWT: secret}, bus.ErrConflictingCredentials},
		{"seed without JWT", bus.Config{NKeySeed: seed}, bus.ErrConflictingCredentials},
		{"JWT and source", bus.Config{UserJWT: "x", JWTSource: jwtSource(func() (string, error) { return "x", nil }), NKeySeed: seed}, bus.ErrConflictingCredentials},
		{"password without user", bus.Config{Password: secret}, bus.ErrConflictingCredentials},
		{"seed that does not parse", bus.Config{UserJWT: "x", NKeySeed: "SU" + secret}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.cfg.URL == "" {
				tc.cfg.URL = "nats://127.0.0.1:1"
			}
			c, err := bus.Connect(ctxT(t), tc.cfg)
			if err == nil {
				_ = c.Close()
				t.Fatal("accepted")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("error %v, want %v", err, tc.want)
			}
			if errors.Is(err, bus.ErrConnect) {
				t.Fatalf("tried to connect: %v", err)
			}
			if strings.Contains(err.Error(), secret) {
				t.Fatalf("error discloses a credential: %v", err)
			}
		})
	}
}

// newSeed makes a user nkey and returns its seed.
func newSeed(t *testing.T) string {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	s, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	return string(s)
}

// jwtSource is a bus.JWTSource made of a function.
type jwtSource func() (string, error)

func (f jwtSource) UserJWT() (string, error) { return f() }
