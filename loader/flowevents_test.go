package loader

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

// TestFlowEvents: with flow sync on, every connection-table write is
// reported once with the exact flow and backend, a hit is not reported,
// and with flow sync off nothing is.
func TestFlowEvents(t *testing.T) {
	f := newFixture(t, seed)
	r, err := f.d.FlowEvents()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	const vip4, vip6 = "10.0.0.100:80", "[2001:db8::100]:443"
	next := func() (FlowEvent, error) { return r.Read(time.Now().Add(50 * time.Millisecond)) }

	f.run(t, tcp4(synSeg, vip4)(t)) // flow sync off: a write, no event
	if e, err := next(); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("event with flow sync off: %+v %v", e, err)
	}
	if _, err := f.d.SetConfig(Config{Seed: seed, MAC: lbMAC, FlowSync: true}); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		in     []byte
		report bool
		src    string
		dst    string
		vip    VIPKey
	}{
		{"v4 syn writes", tcp4(synSeg, vip4)(t), true, client4, vip4, vTCP},
		{"v4 ack hits", tcp4(ackSeg, vip4)(t), false, "", "", VIPKey{}},
		{"v6 syn writes", tcp6(synSeg, vip6)(t), true, client6, vip6, v6TCP},
	}
	for _, c := range cases {
		before := MonotonicNow()
		f.run(t, c.in)
		e, err := next()
		if !c.report {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s: unexpected event %+v %v", c.name, e, err)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		want := Flow{Src: netip.MustParseAddrPort(c.src), Dst: netip.MustParseAddrPort(c.dst), Proto: TCP, Backend: f.pick(c.vip, c.src, c.dst)}
		if e.Flow != want {
			t.Errorf("%s: event %+v, want %+v", c.name, e.Flow, want)
		}
		if e.At < before || e.At > MonotonicNow() {
			t.Errorf("%s: event time %v outside [%v, now]", c.name, e.At, before)
		}
	}
	st, err := f.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st[StatSyncLost].Packets != 0 {
		t.Fatalf("sync_lost = %d", st[StatSyncLost].Packets)
	}
}
