package eventlog

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"
)

func sampleLog(secureBoot bool) *Builder {
	b := NewBuilder(3)
	b.Measure(0, EVSCRTMVersion, []byte("fw 1.0"))
	b.SecureBootVariable(secureBoot)
	b.Measure(4, EVEFIBootServicesApp, []byte("kernel"))
	for pcr := range 8 {
		b.Separator(pcr)
	}
	return b
}

func TestRoundTripAndReplay(t *testing.T) {
	for _, sb := range []bool{true, false} {
		b := sampleLog(sb)
		log, err := Parse(b.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if log.Locality != 3 || len(log.Events) != 11 {
			t.Fatalf("locality %d, %d events", log.Locality, len(log.Events))
		}
		pcrs := log.Replay()
		// PCR 0 starts at the locality, then is extended twice.
		want := make([]byte, 32)
		want[31] = 3
		for _, e := range log.Events {
			if e.PCR == 0 {
				d := sha256.Sum256(append(want, e.SHA256...))
				want = d[:]
			}
		}
		if !bytes.Equal(pcrs[0], want) {
			t.Fatal("PCR 0 replay wrong")
		}
		if err := log.Check(pcrs); err != nil {
			t.Fatal(err)
		}
		enabled, measured, err := log.SecureBoot()
		if err != nil || !measured || enabled != sb {
			t.Fatalf("secure boot %v measured %v err %v", enabled, measured, err)
		}
		changed := b.PCRs()
		changed[4] = make([]byte, 32)
		if err := log.Check(changed); err == nil {
			t.Fatal("changed PCR accepted")
		}
		delete(changed, 4)
		if err := log.Check(changed); err == nil {
			t.Fatal("missing PCR accepted")
		}
	}
}

func TestSecureBootDigestMustMatch(t *testing.T) {
	b := NewBuilder(0)
	b.SecureBootVariable(false)
	raw := b.Bytes()
	// Claim SecureBoot=1 in the data while the digest says 0.
	raw[len(raw)-1] = 1
	log, err := Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := log.SecureBoot(); err == nil {
		t.Fatal("event data not matching its digest accepted")
	}
}

func TestParseRejects(t *testing.T) {
	good := sampleLog(true).Bytes()
	le := binary.LittleEndian
	specAlgCount := 4 + 4 + 20 + 4 + 16 + 8 // offset of numberOfAlgorithms
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"truncated", good[:len(good)-3]},
		{"not no-action first", func() []byte { b := bytes.Clone(good); le.PutUint32(b[4:], 1); return b }()},
		{"not crypto agile", func() []byte { b := bytes.Clone(good); b[32] = 'X'; return b }()},
		{"no algorithms", func() []byte { b := bytes.Clone(good); le.PutUint32(b[specAlgCount:], 0); return b }()},
		{"huge", make([]byte, MaxLogSize+1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Parse(tc.in); !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	f.Add(sampleLog(true).Bytes())
	f.Add(NewBuilder(0).Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		log, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not ErrMalformed: %v", err)
			}
			return
		}
		pcrs := log.Replay()
		if err := log.Check(pcrs); err != nil {
			t.Fatalf("log does not check against its own replay: %v", err)
		}
		_, _, _ = log.SecureBoot()
	})
}
