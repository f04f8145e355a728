package loader

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/testenv/testutil"
	"golang.org/x/sys/unix"
)

const (
	xdpDrop = 1
	xdpPass = 2
	xdpTx   = 3
	seed    = 0x5eed
	ringN   = 13
)

type testVIP struct {
	key      VIPKey
	id       uint32
	fwd      Forward
	backends []uint32 // indices; ring slot i holds backends[i%len]
	noRing   bool
	guePort  uint16
}

var (
	vTCP    = VIPKey{netip.MustParseAddr("10.0.0.100"), 80, TCP}
	vUDP    = VIPKey{netip.MustParseAddr("10.0.0.100"), 53, UDP}
	vAny    = VIPKey{netip.MustParseAddr("10.0.0.101"), 0, TCP}
	v6TCP   = VIPKey{netip.MustParseAddr("2001:db8::100"), 443, TCP}
	v4in6   = VIPKey{netip.MustParseAddr("10.0.0.102"), 80, TCP}
	v6UDP   = VIPKey{netip.MustParseAddr("2001:db8::100"), 53, UDP}
	vEmpty  = VIPKey{netip.MustParseAddr("10.0.0.103"), 80, TCP}
	v6to4   = VIPKey{netip.MustParseAddr("2001:db8::101"), 80, TCP}
	vNoRing = VIPKey{netip.MustParseAddr("10.0.0.104"), 80, TCP}
	vGUE    = VIPKey{netip.MustParseAddr("10.0.0.105"), 80, TCP}
	vGUEUDP = VIPKey{netip.MustParseAddr("10.0.0.105"), 53, UDP}
	v6GUE   = VIPKey{netip.MustParseAddr("2001:db8::105"), 443, TCP}
	v4GUE6  = VIPKey{netip.MustParseAddr("10.0.0.106"), 53, UDP}

	testBackends = map[uint32]string{
		1: "10.1.0.11", 2: "10.1.0.12", 3: "10.1.0.13", 4: "10.1.0.14", 5: "10.1.0.15", 6: "10.1.0.16",
		7: "2001:db8:1::7", 8: "2001:db8:1::8", 9: "2001:db8:1::9", 10: "2001:db8:1::a", 11: "10.1.0.21",
		12: "10.1.0.31", 13: "10.1.0.32", 14: "2001:db8:1::e", 15: "2001:db8:1::f",
	}
	testVIPs = []testVIP{
		{key: vTCP, id: 1, fwd: ForwardIPIP, backends: []uint32{1, 2, 3}},
		{key: vUDP, id: 2, fwd: ForwardDSR, backends: []uint32{4, 5}},
		{key: vAny, id: 3, fwd: ForwardIPIP, backends: []uint32{6}},
		{key: v6TCP, id: 4, fwd: ForwardIPIP, backends: []uint32{7, 8}},
		{key: v4in6, id: 5, fwd: ForwardIPIP, backends: []uint32{9}},
		{key: v6UDP, id: 6, fwd: ForwardDSR, backends: []uint32{10}},
		{key: vEmpty, id: 7, fwd: ForwardIPIP, backends: []uint32{0}},
		{key: v6to4, id: 8, fwd: ForwardIPIP, backends: []uint32{11}},
		{key: vNoRing, id: 9, fwd: ForwardIPIP, noRing: true},
		{key: vGUE, id: 10, fwd: ForwardGUE, backends: []uint32{12}},
		{key: vGUEUDP, id: 11, fwd: ForwardGUE, guePort: 5555, backends: []uint32{13}},
		{key: v6GUE, id: 12, fwd: ForwardGUE, backends: []uint32{14}},
		{key: v4GUE6, id: 13, fwd: ForwardGUE, guePort: 5555, backends: []uint32{15}},
	}
)

type fixture struct {
	d     *Datapath
	rings map[VIPKey][]uint32
	ids   map[VIPKey]uint32
}

func newFixture(t testing.TB, seedVal uint32) *fixture {
	t.Helper()
	testutil.Require(t)
	d, err := Load(context.Background(), Options{FlowTableSize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if _, err := d.SetConfig(Config{Seed: seedVal, MAC: lbMAC}); err != nil {
		t.Fatal(err)
	}
	f := &fixture{d: d, rings: map[VIPKey][]uint32{}, ids: map[VIPKey]uint32{}}
	for _, v := range testVIPs {
		if _, err := d.SetVIP(v.key, VIP{ID: v.id, Forward: v.fwd, GUEPort: v.guePort}); err != nil {
			t.Fatal(err)
		}
		f.ids[v.key] = v.id
		for _, b := range v.backends {
			if b == 0 {
				continue
			}
			f.setBackend(t, b, v.id, BackendUsable)
		}
		if v.noRing {
			continue
		}
		ring := make([]uint32, ringN)
		for i := range ring {
			ring[i] = v.backends[i%len(v.backends)]
		}
		f.replaceRing(t, v.key, ring)
	}
	return f
}

func (f *fixture) setBackend(t testing.TB, idx, vipID uint32, flags BackendFlags) {
	t.Helper()
	if _, err := f.d.SetBackend(idx, Backend{Addr: netip.MustParseAddr(testBackends[idx]), VIPID: vipID, Flags: flags, MAC: backendMAC(idx)}); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) replaceRing(t testing.TB, k VIPKey, ring []uint32) {
	t.Helper()
	if _, err := f.d.ReplaceRing(k, ring); err != nil {
		t.Fatal(err)
	}
	f.rings[k] = ring
}

// pick is the backend the ring gives a new flow, computed independently in Go.
func (f *fixture) pick(k VIPKey, src, dst string) uint32 {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	ring := f.rings[k]
	return ring[flowHash(s, d, k.Proto, seed)%uint32(len(ring))]
}

func (f *fixture) run(t testing.TB, in []byte) (uint32, []byte) {
	t.Helper()
	opts := &ebpf.RunOptions{Data: in, DataOut: make([]byte, len(in)+256)}
	ret, err := f.d.Program().Run(opts)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return ret, opts.DataOut
}

func backendAddr(idx uint32) netip.Addr { return netip.MustParseAddr(testBackends[idx]) }

func monoCoarse(t testing.TB) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Nano())
}

const (
	client4 = "192.0.2.10:40000"
	client6 = "[2001:db8:c::10]:40000"
)

// withConfig is a case's setup that sets the data plane's config flags.
func withConfig(c Config) func(t testing.TB, f *fixture) {
	return func(t testing.TB, f *fixture) {
		c.Seed, c.MAC = seed, lbMAC
		if _, err := f.d.SetConfig(c); err != nil {
			t.Fatal(err)
		}
	}
}

type pktCase struct {
	name string
	in   func(t testing.TB) []byte
	// setup runs after the fixture is built and before the packet.
	setup func(t testing.TB, f *fixture)
	act   uint32
	// want is the exact output frame; nil with XDP_PASS means "untouched".
	want func(t testing.TB, f *fixture, in []byte) []byte
	// stats are the exact global counters (packets) expected; every
	// counter not listed must stay 0.
	stats map[Stat]uint64
	// vip and backend whose counters must show the one packet.
	vip     VIPKey
	backend func(f *fixture) uint32
	// flow is the tracked flow expected afterwards (client, VIP) with
	// its backend, when set.
	flow *flowWant
}

type flowWant struct {
	src, dst string
	proto    Proto
	backend  func(f *fixture) uint32 // 0: no entry
}

func ipip4To(k VIPKey, client, vip string) func(testing.TB, *fixture, []byte) []byte {
	return func(t testing.TB, f *fixture, in []byte) []byte {
		b := f.pick(k, client, vip)
		return expectIPIP4(t, in, backendAddr(b), b, netip.MustParseAddrPort(client))
	}
}

func ipip6To(k VIPKey, client, vip string) func(testing.TB, *fixture, []byte) []byte {
	return func(t testing.TB, f *fixture, in []byte) []byte {
		b := f.pick(k, client, vip)
		return expectIPIP6(t, in, backendAddr(b), b, netip.MustParseAddrPort(client))
	}
}

func dsrTo(k VIPKey, client, vip string) func(testing.TB, *fixture, []byte) []byte {
	return func(t testing.TB, f *fixture, in []byte) []byte { return expectDSR(in, f.pick(k, client, vip)) }
}

func picked(k VIPKey, client, vip string) func(*fixture) uint32 {
	return func(f *fixture) uint32 { return f.pick(k, client, vip) }
}

func fixed(idx uint32) func(*fixture) uint32 { return func(*fixture) uint32 { return idx } }

// otherThan returns a backend of vTCP that the ring would not pick.
func otherThan(k VIPKey, client, vip string) func(*fixture) uint32 {
	return func(f *fixture) uint32 { return f.pick(k, client, vip)%3 + 1 }
}

func tracked(client, vip string, proto Proto, b func(*fixture) uint32) *flowWant {
	return &flowWant{src: client, dst: vip, proto: proto, backend: b}
}

func fragment4(t testing.TB, dst string, flags layers.IPv4Flag, off uint16) []byte {
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: flags, FragOffset: off,
		SrcIP: netip.MustParseAddr("192.0.2.10").AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	return serialize(t, eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(bytes.Repeat([]byte{0xab}, 24)))
}

func rawIPv6(t testing.TB, dst string, next layers.IPProtocol, payload []byte) []byte {
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: next,
		SrcIP: netip.MustParseAddr("2001:db8:c::10").AsSlice(), DstIP: netip.MustParseAddr(dst).AsSlice()}
	return serialize(t, eth(layers.EthernetTypeIPv6), ip, gopacket.Payload(payload))
}

// icmpFragNeeded is a router's "fragmentation needed" about a reply the
// backend sent from vip to client.
func icmpFragNeeded(t testing.TB, vip, client string, seg l4, quoteLen int) []byte {
	quoted := pkt4(t, vip, client, seg)[14:]
	if quoteLen > 0 {
		quoted = quoted[:quoteLen]
	}
	v := netip.MustParseAddrPort(vip)
	ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4,
		SrcIP: netip.MustParseAddr("198.51.100.1").AsSlice(), DstIP: v.Addr().AsSlice()}
	ic := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4), Seq: 1400}
	return serialize(t, eth(layers.EthernetTypeIPv4), ip, ic, gopacket.Payload(quoted))
}

func icmp6TooBig(t testing.TB, vip, client string, seg l4, quoteLen int) []byte {
	quoted := pkt6(t, vip, client, seg)[14:]
	if quoteLen > 0 {
		quoted = quoted[:quoteLen]
	}
	v := netip.MustParseAddrPort(vip)
	ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolICMPv6,
		SrcIP: netip.MustParseAddr("2001:db8:ff::1").AsSlice(), DstIP: v.Addr().AsSlice()}
	ic := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(2, 0)}
	if err := ic.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	mtu := binary.BigEndian.AppendUint32(nil, 1280)
	return serialize(t, eth(layers.EthernetTypeIPv6), ip, ic, gopacket.Payload(append(mtu, quoted...)))
}

// mutate returns a builder that edits a valid packet.
func mutate(build func(testing.TB) []byte, edit func(b []byte) []byte) func(testing.TB) []byte {
	return func(t testing.TB) []byte { return edit(build(t)) }
}

// cut4 truncates an IPv4 frame to n bytes and fixes the IPv4 total length,
// so only the layer above is short.
func cut4(n int) func([]byte) []byte {
	return func(b []byte) []byte {
		b = b[:n]
		binary.BigEndian.PutUint16(b[16:], uint16(n-14))
		return b
	}
}

func cut6(n int) func([]byte) []byte {
	return func(b []byte) []byte {
		b = b[:n]
		binary.BigEndian.PutUint16(b[18:], uint16(n-54))
		return b
	}
}

func tcp4(seg l4, dst string) func(testing.TB) []byte {
	return func(t testing.TB) []byte { return pkt4(t, client4, dst, seg) }
}

func tcp6(seg l4, dst string) func(testing.TB) []byte {
	return func(t testing.TB) []byte { return pkt6(t, client6, dst, seg) }
}

var nopOptions = []layers.IPv4Option{{OptionType: 1}, {OptionType: 1}, {OptionType: 1}, {OptionType: 1}}

func pktCases() []pktCase {
	const vip4 = "10.0.0.100:80"
	const vip6 = "[2001:db8::100]:443"
	ackCT := tracked(client4, vip4, TCP, picked(vTCP, client4, vip4))
	return []pktCase{
		// --- forwarding, both families, both L4s, both modes ---
		{name: "v4 tcp syn ipip", in: tcp4(synSeg, vip4), act: xdpTx, want: ipip4To(vTCP, client4, vip4),
			stats: map[Stat]uint64{StatTxIPIP: 1}, vip: vTCP, backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "v4 tcp ack miss inserts", in: tcp4(ackSeg, vip4), act: xdpTx, want: ipip4To(vTCP, client4, vip4),
			stats: map[Stat]uint64{StatTxIPIP: 1, StatCTMiss: 1}, vip: vTCP, backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "v4 udp dsr", in: tcp4(udpDg, "10.0.0.100:53"), act: xdpTx, want: dsrTo(vUDP, client4, "10.0.0.100:53"),
			stats: map[Stat]uint64{StatTxDSR: 1, StatCTMiss: 1}, vip: vUDP, backend: picked(vUDP, client4, "10.0.0.100:53"),
			flow: tracked(client4, "10.0.0.100:53", UDP, picked(vUDP, client4, "10.0.0.100:53"))},
		{name: "v6 tcp syn ipip6", in: tcp6(synSeg, vip6), act: xdpTx, want: ipip6To(v6TCP, client6, vip6),
			stats: map[Stat]uint64{StatTxIPIP: 1}, vip: v6TCP, backend: picked(v6TCP, client6, vip6),
			flow: tracked(client6, vip6, TCP, picked(v6TCP, client6, vip6))},
		{name: "v6 tcp ack ipip6", in: tcp6(ackSeg, vip6), act: xdpTx, want: ipip6To(v6TCP, client6, vip6),
			stats: map[Stat]uint64{StatTxIPIP: 1, StatCTMiss: 1}, vip: v6TCP, backend: picked(v6TCP, client6, vip6)},
		{name: "v6 udp dsr", in: tcp6(udpDg, "[2001:db8::100]:53"), act: xdpTx, want: dsrTo(v6UDP, client6, "[2001:db8::100]:53"),
			stats: map[Stat]uint64{StatTxDSR: 1, StatCTMiss: 1}, vip: v6UDP, backend: fixed(10)},
		{name: "v4 in v6 ipip", in: tcp4(synSeg, "10.0.0.102:80"), act: xdpTx, want: ipip6To(v4in6, client4, "10.0.0.102:80"),
			stats: map[Stat]uint64{StatTxIPIP: 1}, vip: v4in6, backend: fixed(9)},
		{name: "v6 vip with v4 backend refused", in: tcp6(synSeg, "[2001:db8::101]:80"), act: xdpDrop,
			stats: map[Stat]uint64{StatDropUnsupported: 1}, vip: v6to4},
		{name: "v4 ip options ipip", in: func(t testing.TB) []byte { return pkt4(t, client4, vip4, synSeg, nopOptions...) },
			act: xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1}, vip: vTCP,
			backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "v4 ip options dsr", in: func(t testing.TB) []byte { return pkt4(t, client4, "10.0.0.100:53", udpDg, nopOptions...) },
			act: xdpTx, want: dsrTo(vUDP, client4, "10.0.0.100:53"), stats: map[Stat]uint64{StatTxDSR: 1, StatCTMiss: 1},
			vip: vUDP, backend: picked(vUDP, client4, "10.0.0.100:53")},
		{name: "port-0 vip any port", in: tcp4(synSeg, "10.0.0.101:8443"), act: xdpTx, want: ipip4To(vAny, client4, "10.0.0.101:8443"),
			stats: map[Stat]uint64{StatTxIPIP: 1}, vip: vAny, backend: fixed(6)},
		{name: "vip packet in a frame for another mac passes (flooded)", act: xdpPass, stats: map[Stat]uint64{StatPassOtherHost: 1},
			in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { b[5] ^= 0xff; return b })},
		{name: "vip packet in a broadcast frame passes", act: xdpPass, stats: map[Stat]uint64{StatPassOtherHost: 1},
			in: mutate(tcp6(synSeg, vip6), func(b []byte) []byte { copy(b, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}); return b })},
		{name: "port-0 vip address, other proto: closed", in: tcp4(udpDg, "10.0.0.101:8443"), act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},

		// --- connection table ---
		{name: "ct hit keeps tracked backend", in: tcp4(ackSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				setFlow(t, f, client4, vip4, TCP, otherThan(vTCP, client4, vip4)(f), 0)
			},
			act: xdpTx, want: func(t testing.TB, f *fixture, in []byte) []byte {
				b := otherThan(vTCP, client4, vip4)(f)
				return expectIPIP4(t, in, backendAddr(b), b, netip.MustParseAddrPort(client4))
			}, stats: map[Stat]uint64{StatTxIPIP: 1, StatCTHit: 1}, vip: vTCP, backend: otherThan(vTCP, client4, vip4),
			flow: tracked(client4, vip4, TCP, otherThan(vTCP, client4, vip4))},
		{name: "syn re-hashes despite entry", in: tcp4(synSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				setFlow(t, f, client4, vip4, TCP, otherThan(vTCP, client4, vip4)(f), 0)
			},
			act: xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1}, vip: vTCP,
			backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "hit on down backend re-steered", in: tcp4(ackSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				other := otherThan(vTCP, client4, vip4)(f)
				setFlow(t, f, client4, vip4, TCP, other, 0)
				f.setBackend(t, other, 1, 0)
			},
			act: xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1, StatCTResteer: 1},
			vip: vTCP, backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "hit on removed backend re-steered", in: tcp4(ackSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				other := otherThan(vTCP, client4, vip4)(f)
				setFlow(t, f, client4, vip4, TCP, other, 0)
				if err := f.d.ClearBackend(other); err != nil {
					t.Fatal(err)
				}
			},
			act: xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1, StatCTResteer: 1},
			vip: vTCP, backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "hit on other vip's backend re-steered", in: tcp4(ackSeg, vip4),
			setup: func(t testing.TB, f *fixture) { setFlow(t, f, client4, vip4, TCP, 6, 0) },
			act:   xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1, StatCTResteer: 1},
			vip: vTCP, backend: picked(vTCP, client4, vip4), flow: ackCT},
		{name: "hit on draining backend continues", in: tcp4(ackSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				other := otherThan(vTCP, client4, vip4)(f)
				setFlow(t, f, client4, vip4, TCP, other, 0)
				f.setBackend(t, other, 1, BackendUsable|BackendDraining)
			},
			act: xdpTx, want: func(t testing.TB, f *fixture, in []byte) []byte {
				b := otherThan(vTCP, client4, vip4)(f)
				return expectIPIP4(t, in, backendAddr(b), b, netip.MustParseAddrPort(client4))
			}, stats: map[Stat]uint64{StatTxIPIP: 1, StatCTHit: 1}, vip: vTCP, backend: otherThan(vTCP, client4, vip4)},
		{name: "udp fresh entry hit", in: tcp4(udpDg, "10.0.0.100:53"),
			setup: func(t testing.TB, f *fixture) {
				setFlow(t, f, client4, "10.0.0.100:53", UDP, 9-f.pick(vUDP, client4, "10.0.0.100:53"), monoCoarse(t))
			},
			act: xdpTx, want: func(t testing.TB, f *fixture, in []byte) []byte {
				return expectDSR(in, 9-f.pick(vUDP, client4, "10.0.0.100:53"))
			}, stats: map[Stat]uint64{StatTxDSR: 1, StatCTHit: 1}, vip: vUDP},
		{name: "udp idle entry expires", in: tcp4(udpDg, "10.0.0.100:53"),
			setup: func(t testing.TB, f *fixture) {
				setFlow(t, f, client4, "10.0.0.100:53", UDP, 9-f.pick(vUDP, client4, "10.0.0.100:53"), monoCoarse(t)-uint64(31*time.Second))
			},
			act: xdpTx, want: dsrTo(vUDP, client4, "10.0.0.100:53"), stats: map[Stat]uint64{StatTxDSR: 1, StatCTResteer: 1},
			vip: vUDP, backend: picked(vUDP, client4, "10.0.0.100:53"),
			flow: tracked(client4, "10.0.0.100:53", UDP, picked(vUDP, client4, "10.0.0.100:53"))},
		{name: "ring slot on down backend probes next", in: tcp4(synSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				// Backend 1 down but still in the ring (before the control plane swaps it).
				ring := make([]uint32, ringN)
				for i := range ring {
					ring[i] = 1
				}
				slot := flowHash(netip.MustParseAddrPort(client4), netip.MustParseAddrPort(vip4), TCP, seed) % ringN
				ring[(slot+2)%ringN] = 3
				f.replaceRing(t, vTCP, ring)
				f.setBackend(t, 1, 1, 0)
			},
			act: xdpTx, want: func(t testing.TB, f *fixture, in []byte) []byte {
				return expectIPIP4(t, in, backendAddr(3), 3, netip.MustParseAddrPort(client4))
			}, stats: map[Stat]uint64{StatTxIPIP: 1}, vip: vTCP, backend: fixed(3), flow: tracked(client4, vip4, TCP, fixed(3))},
		{name: "vip without backends drops", in: tcp4(synSeg, "10.0.0.103:80"), act: xdpDrop,
			stats: map[Stat]uint64{StatDropNoBackend: 1}, vip: vEmpty, flow: tracked(client4, "10.0.0.103:80", TCP, fixed(0))},
		{name: "vip without ring drops", in: tcp4(synSeg, "10.0.0.104:80"), act: xdpDrop,
			stats: map[Stat]uint64{StatDropNoBackend: 1}, vip: vNoRing},
		{name: "all ring backends down drops", in: tcp4(synSeg, vip4),
			setup: func(t testing.TB, f *fixture) {
				for _, b := range []uint32{1, 2, 3} {
					f.setBackend(t, b, 1, 0)
				}
			},
			act: xdpDrop, stats: map[Stat]uint64{StatDropNoBackend: 1}, vip: vTCP},

		// --- ICMP too-big ---
		{name: "icmp frag needed to flow owner", in: func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 28) },
			setup: func(t testing.TB, f *fixture) {
				setFlow(t, f, client4, vip4, TCP, otherThan(vTCP, client4, vip4)(f), 0)
			},
			act: xdpTx, want: func(t testing.TB, f *fixture, in []byte) []byte {
				b := otherThan(vTCP, client4, vip4)(f)
				return expectIPIP4(t, in, backendAddr(b), b, netip.MustParseAddrPort(client4))
			}, stats: map[Stat]uint64{StatTxIPIP: 1, StatCTHit: 1, StatICMPTooBig: 1}, vip: vTCP, backend: otherThan(vTCP, client4, vip4)},
		{name: "icmp frag needed untracked hashes like the flow", in: func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 0) },
			act: xdpTx, want: ipip4To(vTCP, client4, vip4), stats: map[Stat]uint64{StatTxIPIP: 1, StatCTMiss: 1, StatICMPTooBig: 1},
			vip: vTCP, backend: picked(vTCP, client4, vip4), flow: tracked(client4, vip4, TCP, fixed(0))},
		{name: "icmp6 packet too big to flow owner", in: func(t testing.TB) []byte { return icmp6TooBig(t, vip6, client6, ackSeg, 48) },
			act: xdpTx, want: ipip6To(v6TCP, client6, vip6), stats: map[Stat]uint64{StatTxIPIP: 1, StatCTMiss: 1, StatICMPTooBig: 1},
			vip: v6TCP, backend: picked(v6TCP, client6, vip6)},
		{name: "icmp frag needed about a closed port of a vip address: dropped", in: func(t testing.TB) []byte { return icmpFragNeeded(t, "10.0.0.100:22", client4, ackSeg, 28) },
			act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},
		{name: "icmp addressed elsewhere quoting a vip passes", in: mutate(func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 28) },
			func(b []byte) []byte { copy(b[30:34], []byte{10, 0, 0, 200}); return b }), act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "icmp6 addressed elsewhere quoting a vip passes", in: mutate(func(t testing.TB) []byte { return icmp6TooBig(t, vip6, client6, ackSeg, 48) },
			func(b []byte) []byte { b[14+39] ^= 0x80; return b }), act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "icmp echo to vip passes", in: func(t testing.TB) []byte {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4,
				SrcIP: netip.MustParseAddr("192.0.2.10").AsSlice(), DstIP: netip.MustParseAddr("10.0.0.100").AsSlice()}
			return serialize(t, eth(layers.EthernetTypeIPv4), ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
		}, act: xdpPass, stats: map[Stat]uint64{StatPassUnsupported: 1}},

		// --- fragments ---
		{name: "v4 first fragment to vip dropped", in: func(t testing.TB) []byte { return fragment4(t, "10.0.0.100", layers.IPv4MoreFragments, 0) },
			act: xdpDrop, stats: map[Stat]uint64{StatDropFragment: 1}},
		{name: "v4 later fragment to vip dropped", in: func(t testing.TB) []byte { return fragment4(t, "10.0.0.100", 0, 100) },
			act: xdpDrop, stats: map[Stat]uint64{StatDropFragment: 1}},
		{name: "v4 fragment to non-vip passes", in: func(t testing.TB) []byte { return fragment4(t, "10.9.9.9", layers.IPv4MoreFragments, 0) },
			act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "v6 fragment to vip dropped", in: func(t testing.TB) []byte {
			frag := []byte{6, 0, 0, 1, 0, 0, 0, 42} // next TCP, offset 0, M=1, id 42
			return rawIPv6(t, "2001:db8::100", layers.IPProtocolIPv6Fragment, append(frag, make([]byte, 24)...))
		}, act: xdpDrop, stats: map[Stat]uint64{StatDropFragment: 1}},

		// --- not for us: untouched ---
		{name: "non-vip address passes", in: tcp4(synSeg, "10.0.0.200:80"), act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "vip address, other port: closed (no host service answers on a vip)", in: tcp4(synSeg, "10.0.0.100:22"), act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},
		{name: "vip address, other port, vip-open: passes", setup: withConfig(Config{VIPOpen: true}), in: tcp4(synSeg, "10.0.0.100:81"), act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "v6 non-vip passes", in: tcp6(synSeg, "[2001:db8::200]:443"), act: xdpPass, stats: map[Stat]uint64{StatPassNonVIP: 1}},
		{name: "arp passes", in: func(t testing.TB) []byte {
			arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
				Operation: layers.ARPRequest, SourceHwAddress: clientMAC, SourceProtAddress: []byte{192, 0, 2, 10},
				DstHwAddress: make([]byte, 6), DstProtAddress: []byte{10, 0, 0, 100}}
			e := eth(layers.EthernetTypeARP)
			e.DstMAC = layers.EthernetBroadcast
			return serialize(t, e, arp)
		}, act: xdpPass, stats: map[Stat]uint64{StatPassNonIP: 1}},
		{name: "v6 hop-by-hop to vip address: closed", in: func(t testing.TB) []byte {
			return rawIPv6(t, "2001:db8::100", layers.IPProtocolIPv6HopByHop, append([]byte{6, 0, 1, 4, 0, 0, 0, 0}, make([]byte, 20)...))
		}, act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},
		{name: "gre to vip address: closed", in: func(t testing.TB) []byte {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolGRE,
				SrcIP: netip.MustParseAddr("192.0.2.10").AsSlice(), DstIP: netip.MustParseAddr("10.0.0.100").AsSlice()}
			return serialize(t, eth(layers.EthernetTypeIPv4), ip, gopacket.Payload(make([]byte, 8)))
		}, act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},
		{name: "icmp echo to vip address, no-echo: dropped", setup: withConfig(Config{NoEcho: true}), in: func(t testing.TB) []byte {
			ip := &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolICMPv4,
				SrcIP: netip.MustParseAddr("192.0.2.10").AsSlice(), DstIP: netip.MustParseAddr("10.0.0.100").AsSlice()}
			return serialize(t, eth(layers.EthernetTypeIPv4), ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)})
		}, act: xdpDrop, stats: map[Stat]uint64{StatDropVIPClosed: 1}},
		{name: "icmp6 neighbour solicitation to vip address passes (ND must work)", in: func(t testing.TB) []byte {
			return rawIPv6(t, "2001:db8::100", layers.IPProtocolICMPv6, append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 16)...))
		}, act: xdpPass, stats: map[Stat]uint64{StatPassUnsupported: 1}},
		{name: "icmp6 echo to vip address passes", in: func(t testing.TB) []byte {
			return rawIPv6(t, "2001:db8::100", layers.IPProtocolICMPv6, []byte{128, 0, 0, 0, 0, 1, 0, 1})
		}, act: xdpPass, stats: map[Stat]uint64{StatPassUnsupported: 1}},

		// --- malformed or truncated at every layer: never XDP_TX ---
		{name: "ipv4 header truncated", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { return b[:14+10] }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		// The frame holds the whole header, but the IP packet by its own
		// length ends inside it (padding follows): found by FuzzDatapath.
		{name: "udp header past the ipv4 total length", in: mutate(tcp4(udpDg, "10.0.0.100:53"), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], 24)
			return b
		}), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "tcp header past the ipv6 payload length", in: mutate(tcp6(synSeg, vip6), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[18:], 12)
			return b
		}), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ethernet only", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { return b[:14] }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv4 ihl below 5", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { b[14] = 0x44; return b }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv4 wrong version", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { b[14] = 0x65; return b }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv4 total length beyond frame", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], uint16(len(b)))
			return b
		}), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv4 total length below header", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[16:], 16)
			return b
		}), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv4 options beyond frame", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { b[14] = 0x4f; return b[:14+40] }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "tcp header truncated", in: mutate(tcp4(synSeg, vip4), cut4(14+20+12)),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "tcp data offset below 5", in: mutate(tcp4(synSeg, vip4), func(b []byte) []byte { b[14+20+12] = 0x40; return b }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "udp header truncated", in: mutate(tcp4(udpDg, "10.0.0.100:53"), cut4(14+20+6)),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv6 header truncated", in: mutate(tcp6(synSeg, vip6), func(b []byte) []byte { return b[:14+30] }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv6 payload length beyond frame", in: mutate(tcp6(synSeg, vip6), func(b []byte) []byte {
			binary.BigEndian.PutUint16(b[18:], uint16(len(b)))
			return b
		}), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv6 wrong version", in: mutate(tcp6(synSeg, vip6), func(b []byte) []byte { b[14] = 0x46; return b }),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "ipv6 tcp truncated", in: mutate(tcp6(synSeg, vip6), cut6(14+40+10)),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp header truncated", in: mutate(func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 28) }, cut4(14+20+4)),
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp quoted ip truncated", in: func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 12) },
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp quoted ports truncated", in: func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 22) },
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp quoted ihl below 5", in: mutate(func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 28) },
			func(b []byte) []byte { b[14+20+8] = 0x43; return b }), act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp6 quoted ip truncated", in: func(t testing.TB) []byte { return icmp6TooBig(t, vip6, client6, ackSeg, 30) },
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
		{name: "icmp6 quoted ports truncated", in: func(t testing.TB) []byte { return icmp6TooBig(t, vip6, client6, ackSeg, 42) },
			act: xdpPass, stats: map[Stat]uint64{StatMalformed: 1}},
	}
}

func setFlow(t testing.TB, f *fixture, src, dst string, proto Proto, backend uint32, atime uint64) {
	t.Helper()
	if err := f.d.SetFlow(Flow{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst), Proto: proto,
		Backend: backend, LastSeenNano: atime}); err != nil {
		t.Fatal(err)
	}
}

func TestPacketCases(t *testing.T) {
	cases := append(pktCases(), gueCases()...)
	if len(cases) < 40 {
		t.Fatalf("only %d packet cases", len(cases))
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, seed)
			if tc.setup != nil {
				tc.setup(t, f)
			}
			in := tc.in(t)
			orig := append([]byte(nil), in...)
			act, out := f.run(t, in)
			if act != tc.act {
				t.Fatalf("action = %d, want %d", act, tc.act)
			}
			switch {
			case tc.want != nil:
				want := tc.want(t, f, orig)
				if !bytes.Equal(out, want) {
					t.Fatalf("output frame differs\n got %x\nwant %x\n%s", out, want, gopacket.NewPacket(out, layers.LayerTypeEthernet, gopacket.Default).Dump())
				}
			case act == xdpPass:
				if !bytes.Equal(out, orig) {
					t.Fatalf("passed frame was modified\n got %x\nwant %x", out, orig)
				}
			}
			checkStats(t, f, tc.stats, uint64(len(orig)))
			if tc.vip.Addr.IsValid() {
				c, err := f.d.VIPCounter(f.ids[tc.vip])
				if err != nil {
					t.Fatal(err)
				}
				if c != (Counter{Packets: 1, Bytes: uint64(len(orig))}) {
					t.Errorf("vip %s counter = %+v, want 1 packet of %d bytes", tc.vip, c, len(orig))
				}
			}
			if tc.backend != nil {
				b := tc.backend(f)
				c, err := f.d.BackendCounter(b)
				if err != nil {
					t.Fatal(err)
				}
				if c != (Counter{Packets: 1, Bytes: uint64(len(orig))}) {
					t.Errorf("backend %d counter = %+v, want 1 packet of %d bytes", b, c, len(orig))
				}
			}
			if tc.flow != nil {
				fl, ok, err := f.d.LookupFlow(netip.MustParseAddrPort(tc.flow.src), netip.MustParseAddrPort(tc.flow.dst), tc.flow.proto)
				if err != nil {
					t.Fatal(err)
				}
				want := tc.flow.backend(f)
				switch {
				case want == 0 && ok:
					t.Errorf("flow entry to backend %d exists, want none", fl.Backend)
				case want != 0 && !ok:
					t.Errorf("no flow entry, want backend %d", want)
				case want != 0 && fl.Backend != want:
					t.Errorf("flow entry backend = %d, want %d", fl.Backend, want)
				}
			}
		})
	}
}

// checkStats asserts exact packet counts for the listed counters, exact
// bytes for outcomes, and zero everywhere else.
func checkStats(t testing.TB, f *fixture, want map[Stat]uint64, frameLen uint64) {
	t.Helper()
	got, err := f.d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range AllStats() {
		if got[s].Packets != want[s] {
			t.Errorf("counter %s = %d packets, want %d", s, got[s].Packets, want[s])
		}
		if s.IsOutcome() && got[s].Bytes != want[s]*frameLen {
			t.Errorf("counter %s = %d bytes, want %d", s, got[s].Bytes, want[s]*frameLen)
		}
	}
}
