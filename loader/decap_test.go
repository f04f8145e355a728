package loader

import (
	"bytes"
	"context"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/testenv/testutil"
)

func newDecap(t testing.TB, addrs ...string) *Decap {
	t.Helper()
	testutil.Require(t)
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d, err := AttachDecap(context.Background(), DecapOptions{Addrs: as})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func runProg(t testing.TB, p *ebpf.Program, in []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := p.Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, opts.DataOut
}

// TestDecapRoundTrip feeds what the load balancer sends through the backend's
// decap program: the result must be the client's original IP packet, in a
// frame with the LB->backend MACs.
func TestDecapRoundTrip(t *testing.T) {
	f := newFixture(t, seed)
	dc := newDecap(t, "10.1.0.11", "10.1.0.12", "10.1.0.13", "2001:db8:1::7", "2001:db8:1::8", "2001:db8:1::9")
	cases := []struct {
		name string
		in   []byte
	}{
		{"ipip v4", pkt4(t, client4, "10.0.0.100:80", synSeg)},
		{"ipip v4 with options", pkt4(t, client4, "10.0.0.100:80", ackSeg, nopOptions...)},
		{"ip6ip6", pkt6(t, client6, "[2001:db8::100]:443", ackSeg)},
		{"ipv4 in ipv6", pkt4(t, client4, "10.0.0.102:80", synSeg)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			act, enc := f.run(t, append([]byte(nil), tc.in...))
			if act != xdpTx {
				t.Fatalf("lb action %d", act)
			}
			act, dec := runProg(t, dc.Program(), enc)
			if act != xdpPass {
				t.Fatalf("decap action %d", act)
			}
			inner, pad := innerPacket(tc.in)
			want := append(append(append([]byte(nil), enc[:12]...), tc.in[12:14]...), inner...)
			want = append(want, pad...)
			if !bytes.Equal(dec, want) {
				t.Fatalf("decapsulated frame differs\n got %x\nwant %x", dec, want)
			}
		})
	}
	got, passed, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got.Packets != uint64(len(cases)) || passed.Packets != 0 {
		t.Fatalf("decap counters: decapsulated %d passed %d, want %d and 0", got.Packets, passed.Packets, len(cases))
	}
}

func TestDecapLeavesOtherTrafficUntouched(t *testing.T) {
	dc := newDecap(t, "10.1.0.11")
	ipipTo := func(dst string) []byte {
		inner := pkt4(t, client4, "10.0.0.100:80", synSeg)[14:54]
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolIPv4,
			SrcIP: netip.MustParseAddr("172.16.0.1").AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
		return serialize(t, eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(inner))
	}
	cases := []struct {
		name string
		in   []byte
	}{
		{"ipip to another host", ipipTo("10.1.0.99")},
		{"plain tcp to the host", pkt4(t, client4, "10.1.0.11:80", synSeg)},
		{"plain tcp v6", pkt6(t, client6, "[2001:db8:1::7]:80", synSeg)},
		{"truncated outer header", ipipTo("10.1.0.11")[:14+12]},
		{"fragmented ipip", func() []byte {
			b := ipipTo("10.1.0.11")
			b[14+6] |= 0x20 // MF
			return b
		}()},
	}
	for _, tc := range cases {
		act, out := runProg(t, dc.Program(), append([]byte(nil), tc.in...))
		if act != xdpPass || !bytes.Equal(out, tc.in) {
			t.Errorf("%s: action %d, frame changed=%v", tc.name, act, !bytes.Equal(out, tc.in))
		}
	}
	got, passed, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if got.Packets != 0 || passed.Packets != uint64(len(cases)) {
		t.Fatalf("decap counters: decapsulated %d passed %d, want 0 and %d", got.Packets, passed.Packets, len(cases))
	}
}
