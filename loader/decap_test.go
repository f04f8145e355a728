package loader

import (
	"bytes"
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/loader/decap"
	"github.com/sluicelb/sluice/testenv/testutil"
)

func newDecap(t testing.TB, addrs ...string) *decap.Decap {
	t.Helper()
	testutil.Require(t)
	var as []netip.Addr
	for _, a := range addrs {
		as = append(as, netip.MustParseAddr(a))
	}
	d, err := decap.Attach(context.Background(), decap.Options{Addrs: as, GUEPorts: []uint16{DefaultGUEPort, 5555}})
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
	dc := newDecap(t, "10.1.0.11", "10.1.0.12", "10.1.0.13", "2001:db8:1::7", "2001:db8:1::8", "2001:db8:1::9",
		"10.1.0.31", "10.1.0.32", "2001:db8:1::e", "2001:db8:1::f")
	cases := []struct {
		name string
		in   []byte
	}{
		{"ipip v4", pkt4(t, client4, "10.0.0.100:80", synSeg)},
		{"ipip v4 with options", pkt4(t, client4, "10.0.0.100:80", ackSeg, nopOptions...)},
		{"ip6ip6", pkt6(t, client6, "[2001:db8::100]:443", ackSeg)},
		{"ipv4 in ipv6", pkt4(t, client4, "10.0.0.102:80", synSeg)},
		{"gue v4", pkt4(t, client4, "10.0.0.105:80", ackSeg)},
		{"gue v4 with options", pkt4(t, client4, "10.0.0.105:80", ackSeg, nopOptions...)},
		{"gue v4 udp, port 5555", pkt4(t, client4, "10.0.0.105:53", udpDg)},
		{"gue v6", pkt6(t, client6, "[2001:db8::105]:443", ackSeg)},
		{"gue ipv4 in ipv6", pkt4(t, client4, "10.0.0.106:53", udpDg)},
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
	c, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Decapsulated.Packets != uint64(len(cases)) || c.Passed.Packets != 0 || c.Refused.Packets != 0 {
		t.Fatalf("decap counters: %+v, want %d decapsulated", c, len(cases))
	}
}

func TestDecapLeavesOtherTrafficUntouched(t *testing.T) {
	dc := newDecap(t, "10.1.0.11")
	ipipTo := func(dst string) []byte { return encapFrame(t, "172.16.0.1", dst) }
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
		{"udp to the host on a port that is not GUE's", gueFrame(t, "172.16.0.1", "10.1.0.11", 6081, 0x45)},
		{"gue variant 0 (a GUE header) is the stack's", gueFrame(t, "172.16.0.1", "10.1.0.11", DefaultGUEPort, 0x00)},
		{"gue to another host", gueFrame(t, "172.16.0.1", "10.1.0.99", DefaultGUEPort, 0x45)},
		{"truncated gue: no payload", gueFrame(t, "172.16.0.1", "10.1.0.11", DefaultGUEPort, 0x45)[:14+20+8]},
	}
	for _, tc := range cases {
		act, out := runProg(t, dc.Program(), append([]byte(nil), tc.in...))
		if act != xdpPass || !bytes.Equal(out, tc.in) {
			t.Errorf("%s: action %d, frame changed=%v", tc.name, act, !bytes.Equal(out, tc.in))
		}
	}
	c, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Decapsulated.Packets != 0 || c.Passed.Packets != uint64(len(cases)) || c.Refused.Packets != 0 {
		t.Fatalf("decap counters: %+v, want %d passed", c, len(cases))
	}
}

// encapFrame is an IPIP (v4 outer) or IPv4-in-IPv6 (v6 outer) frame from
// src to dst carrying a client's SYN.
func encapFrame(t testing.TB, src, dst string) []byte {
	t.Helper()
	inner := pkt4(t, client4, "10.0.0.100:80", synSeg)[14:54]
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	if s.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolIPv4, SrcIP: s.AsSlice(), DstIP: d.AsSlice()}
		return serialize(t, eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(inner))
	}
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolIPv4, SrcIP: s.AsSlice(), DstIP: d.AsSlice()}
	return serialize(t, eth(layers.EthernetTypeIPv6), ip, gopacket.Payload(inner))
}

// gueFrame is UDP from src to dst:port whose payload is a client's SYN
// with its first byte set to first (0x45: GUE variant 1 carrying IPv4).
func gueFrame(t testing.TB, src, dst string, port uint16, first byte) []byte {
	t.Helper()
	inner := pkt4(t, client4, "10.0.0.100:80", synSeg)[14:54]
	inner[0] = first
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolUDP,
		SrcIP: netip.MustParseAddr(src).AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	udp := &layers.UDP{SrcPort: 50000, DstPort: layers.UDPPort(port)}
	if err := udp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth(layers.EthernetTypeIPv4), ip, udp, gopacket.Payload(inner))
}

// TestDecapGUEPorts: the GUE ports read back as set, are replaced whole,
// and a GUE datagram from outside the allow list is refused.
func TestDecapGUEPorts(t *testing.T) {
	dc := newDecap(t, "10.1.0.11")
	got, err := dc.GUEPorts()
	if err != nil || !slices.Equal(got, []uint16{5555, DefaultGUEPort}) {
		t.Fatalf("GUE ports = %v, %v; want [5555 %d]", got, err, DefaultGUEPort)
	}
	if act, _ := runProg(t, dc.Program(), gueFrame(t, "198.51.100.7", "10.1.0.11", 5555, 0x45)); act != xdpDrop {
		t.Errorf("gue from outside the allow list: action %d, want drop", act)
	}
	if err := dc.SetGUEPorts([]uint16{7000}); err != nil {
		t.Fatal(err)
	}
	if got, _ = dc.GUEPorts(); !slices.Equal(got, []uint16{7000}) {
		t.Fatalf("GUE ports after replace = %v, want [7000]", got)
	}
	in := gueFrame(t, "172.16.0.1", "10.1.0.11", 5555, 0x45)
	if act, out := runProg(t, dc.Program(), append([]byte(nil), in...)); act != xdpPass || !bytes.Equal(out, in) {
		t.Errorf("gue to a port no longer configured: action %d, changed %v", act, !bytes.Equal(out, in))
	}
	if act, out := runProg(t, dc.Program(), gueFrame(t, "172.16.0.1", "10.1.0.11", 7000, 0x45)); act != xdpPass || len(out) < 14 || out[14] != 0x45 {
		t.Errorf("gue to the new port: action %d, inner first byte %x", act, out[14])
	}
	if err := dc.SetGUEPorts([]uint16{0}); err == nil || !strings.Contains(err.Error(), "gue-port 0") {
		t.Errorf("port 0 accepted: %v", err)
	}
	c, err := dc.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c != (decap.Counters{Decapsulated: Counter{Packets: 1, Bytes: 82}, Passed: Counter{Packets: 1, Bytes: 82}, Refused: Counter{Packets: 1, Bytes: 82}}) {
		t.Fatalf("decap counters: %+v", c)
	}
}

// TestDecapAllowFrom: only outer sources in the allow list are
// decapsulated; the others, addressed to us, are dropped and counted as
// refused, and traffic for other hosts is passed whatever its source.
func TestDecapAllowFrom(t *testing.T) {
	testutil.Require(t)
	const me4, me6 = "10.1.0.11", "2001:db8:1::7"
	cases := []struct {
		name     string
		allow    []string
		only     bool
		src, dst string
		wantAct  uint32
		wantStat string
	}{
		{"default v4 outer source prefix", nil, false, "172.16.200.9", me4, xdpPass, "decapsulated"},
		{"default v6 outer source prefix", nil, false, "fd00:5:1ce::abcd", me6, xdpPass, "decapsulated"},
		{"spoofed v4 source", nil, false, "198.51.100.7", me4, xdpDrop, "refused"},
		{"spoofed v6 source", nil, false, "2001:db8:bad::1", me6, xdpDrop, "refused"},
		{"v4 source just outside 172.16/16", nil, false, "172.17.0.1", me4, xdpDrop, "refused"},
		{"given prefix", []string{"198.51.100.0/24"}, false, "198.51.100.7", me4, xdpPass, "decapsulated"},
		{"given v6 prefix", []string{"2001:db8:bad::/48"}, false, "2001:db8:bad::1", me6, xdpPass, "decapsulated"},
		{"a v4 prefix never matches a v6 source", []string{"32.1.13.184/32"}, false, "2001:db8:bad::1", me6, xdpDrop, "refused"},
		{"allow-only drops the defaults", []string{"198.51.100.0/24"}, true, "172.16.0.1", me4, xdpDrop, "refused"},
		{"allow-only keeps its own", []string{"198.51.100.0/24"}, true, "198.51.100.200", me4, xdpPass, "decapsulated"},
		{"not for us: passed from any source", nil, false, "198.51.100.7", "10.1.0.99", xdpPass, "passed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var allow []netip.Prefix
			for _, p := range tc.allow {
				allow = append(allow, netip.MustParsePrefix(p))
			}
			d, err := decap.Attach(context.Background(), decap.Options{
				Addrs: []netip.Addr{netip.MustParseAddr(me4), netip.MustParseAddr(me6)}, AllowFrom: allow, AllowOnly: tc.only})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			in := encapFrame(t, tc.src, tc.dst)
			act, _ := runProg(t, d.Program(), append([]byte(nil), in...))
			if act != tc.wantAct {
				t.Fatalf("action %d, want %d", act, tc.wantAct)
			}
			c, err := d.Counters()
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]uint64{"decapsulated": c.Decapsulated.Packets, "passed": c.Passed.Packets, "refused": c.Refused.Packets}
			for k, v := range got {
				want := uint64(0)
				if k == tc.wantStat {
					want = 1
				}
				if v != want {
					t.Fatalf("counters %v, want one %s", got, tc.wantStat)
				}
			}
			if tc.wantStat == "refused" && c.Refused.Bytes != uint64(len(in)) {
				t.Fatalf("refused bytes %d, want %d", c.Refused.Bytes, len(in))
			}
		})
	}
}

// TestDecapAllowList: the allow list reads back as given, replacing it
// drops what is no longer wanted, and bad lists are refused whole.
func TestDecapAllowList(t *testing.T) {
	d := newDecap(t, "10.1.0.11")
	got, err := d.Allowed()
	if err != nil {
		t.Fatal(err)
	}
	if want := []netip.Prefix{netip.MustParsePrefix("172.16.0.0/16"), netip.MustParsePrefix("fd00:5:1ce::/96")}; !slices.Equal(got, want) {
		t.Fatalf("default allow list %v, want %v", got, want)
	}
	next := []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("10.9.8.7/16")}
	if err := d.SetAllow(next); err != nil {
		t.Fatal(err)
	}
	if got, _ = d.Allowed(); !slices.Equal(got, next[:1]) {
		t.Fatalf("after replace: %v, want [10.9.0.0/16] (a host address is masked to its prefix)", got)
	}
	if err := d.SetAllow([]netip.Prefix{{}}); err == nil {
		t.Fatal("an invalid prefix was accepted")
	}
	if err := d.SetAllow([]netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("::ffff:10.1.0.0/112")}); err == nil {
		t.Fatal("an IPv4-mapped prefix, which could never match, was accepted")
	}
	if got, _ = d.Allowed(); !slices.Equal(got, next[:1]) {
		t.Fatalf("a refused list changed the allow list: %v", got)
	}
	if _, err := decap.Attach(context.Background(), decap.Options{Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.11")}, AllowOnly: true}); err == nil {
		t.Fatal("allow-only with no prefix was accepted")
	}
}
