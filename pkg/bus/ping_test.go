package bus_test

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vigil-cc/vigil/pkg/bus"
	"github.com/vigil-cc/vigil/pkg/natstest"
)

// blackhole is a TCP proxy to a server that, once frozen, stops passing
// bytes without closing either socket: what a client sees of a server cut
// off the network.
type blackhole struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func newBlackhole(t *testing.T, target string) *blackhole {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackhole{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		b.mu.Lock()
		defer b.mu.Unlock()
		for _, c := range b.conns {
			c.Close()
		}
	})
	go b.serve()
	return b
}

func (b *blackhole) serve() {
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", b.target)
		if err != nil {
			c.Close()
			continue
		}
		b.mu.Lock()
		b.conns = append(b.conns, c, s)
		b.mu.Unlock()
		go b.pipe(c, s)
		go b.pipe(s, c)
	}
}

// pipe copies until frozen; then it reads and drops, so that the sender's
// writes never fail.
func (b *blackhole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		b.mu.Lock()
		frozen := b.frozen
		b.mu.Unlock()
		if frozen {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			return
		}
	}
}

func (b *blackhole) freeze() {
	b.mu.Lock()
	b.frozen = true
	b.mu.Unlock()
}

// TestDeadServerDetectedByPings: when the server stops answering without
// closing the connection (cut off the network), the connection gives it up
// after maxPingsOut missed pings, not minutes later.
func TestDeadServerDetectedByPings(t *testing.T) {
	srv := natstest.Start(t)
	hole := newBlackhole(t, srv.URL()[len("nats://"):])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const ping = 200 * time.Millisecond
	conn, err := bus.Connect(ctx, bus.Config{URL: "nats://" + hole.ln.Addr().String(), Name: "ping-test", PingInterval: ping, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	disconnected := make(chan struct{})
	var once sync.Once
	conn.NC.SetDisconnectErrHandler(func(_ *nats.Conn, _ error) { once.Do(func() { close(disconnected) }) })
	frozen := time.Now()
	hole.freeze()
	select {
	case <-disconnected:
		if took := time.Since(frozen); took > 10*ping {
			t.Errorf("the dead server was given up after %s, want about %s", took, 4*ping)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the connection still trusts a server that stopped answering 5 s ago")
	}
}
