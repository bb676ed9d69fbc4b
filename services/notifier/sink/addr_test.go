package sink

import (
	"errors"
	"net/netip"
	"testing"
)

func TestCheckAddr(t *testing.T) {
	tests := []struct {
		addr    string
		refused bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"10.1.2.3", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"fd00::1", true},          // ULA
		{"fc00::1", true},          // ULA
		{"169.254.1.1", true},      // link-local
		{"169.254.169.254", true},  // Azure IMDS
		{"168.63.129.16", true},    // Azure wireserver
		{"fe80::1", true},          // link-local
		{"100.64.0.1", true},       // CGNAT
		{"100.127.255.254", true},  // CGNAT
		{"0.0.0.0", true},          // unspecified
		{"::", true},               // unspecified
		{"0.1.2.3", true},          // "this network"
		{"224.0.0.1", true},        // multicast
		{"239.255.255.250", true},  // multicast
		{"ff02::1", true},          // multicast
		{"255.255.255.255", true},  // broadcast
		{"240.0.0.1", true},        // reserved
		{"198.18.0.1", true},       // benchmarking
		{"::ffff:127.0.0.1", true}, // IPv4-mapped loopback
		{"::ffff:169.254.169.254", true},
		{"64:ff9b::a9fe:a9fe", true}, // NAT64 of 169.254.169.254
		{"64:ff9b::a00:1", true},     // NAT64 of 10.0.0.1
		{"2002:a00:1::1", true},      // 6to4 of 10.0.0.1
		{"64:ff9b:1::1", true},       // local-use NAT64
		{"20.50.2.1", false},         // public (Azure)
		{"1.1.1.1", false},
		{"100.63.255.255", false}, // just below CGNAT
		{"100.128.0.0", false},    // just above CGNAT
		{"172.32.0.1", false},
		{"168.63.129.17", false},
		{"2606:4700:4700::1111", false},
		{"64:ff9b::101:101", false}, // NAT64 of 1.1.1.1
		{"2002:101:101::1", false},  // 6to4 of 1.1.1.1
	}
	for _, tt := range tests {
		err := checkAddr(netip.MustParseAddr(tt.addr))
		if (err != nil) != tt.refused {
			t.Errorf("checkAddr(%s) = %v, want refused=%v", tt.addr, err, tt.refused)
		}
		if err != nil && !errors.Is(err, ErrRefused) {
			t.Errorf("checkAddr(%s) = %v, not ErrRefused", tt.addr, err)
		}
	}
}

func TestRefusePrivateAtDial(t *testing.T) {
	for _, a := range []string{"127.0.0.1:443", "[::1]:443", "169.254.169.254:80", "[::ffff:10.0.0.1]:443"} {
		if err := refusePrivate("tcp", a, nil); !errors.Is(err, ErrRefused) {
			t.Errorf("refusePrivate(%s) = %v, want ErrRefused", a, err)
		}
	}
	if err := refusePrivate("tcp", "20.50.2.1:443", nil); err != nil {
		t.Errorf("refusePrivate(public) = %v", err)
	}
	if err := refusePrivate("tcp", "example.com:443", nil); !errors.Is(err, ErrRefused) {
		t.Errorf("refusePrivate(a name) = %v, want ErrRefused (the dialer passes addresses)", err)
	}
}
