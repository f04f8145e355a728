package loader

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

// gueSport is the UDP source port the data plane draws from a flow.
func gueSport(client netip.AddrPort) layers.UDPPort {
	return layers.UDPPort(0xc000 | encapEntropy(client)&0x3fff)
}

// expectGUE builds the exact GUE frame for in: the outer header of the
// backend's family (outer4/outer6, with UDP as its protocol), then UDP to port with a checksum gopacket computes over the
// whole inner packet, then the inner packet. noCsum expects checksum 0.
func expectGUE(t testing.TB, in []byte, be netip.Addr, beIdx uint32, client netip.AddrPort, port uint16, noCsum bool) []byte {
	t.Helper()
	inner, pad := innerPacket(in)
	udp := &layers.UDP{SrcPort: gueSport(client), DstPort: layers.UDPPort(port)}
	var outer gopacket.SerializableLayer
	typ := layers.EthernetTypeIPv4
	var nl gopacket.NetworkLayer
	if be.Is4() {
		ip := outer4(inner, be, client, layers.IPProtocolUDP)
		outer, nl = ip, ip
	} else {
		ip := outer6(inner, be, client, layers.IPProtocolUDP)
		outer, nl, typ = ip, ip, layers.EthernetTypeIPv6
	}
	if err := udp.SetNetworkLayerForChecksum(nl); err != nil {
		t.Fatal(err)
	}
	e := &layers.Ethernet{SrcMAC: lbMAC, DstMAC: backendMAC(beIdx), EthernetType: typ}
	out := append(serialize(t, e, outer, udp, gopacket.Payload(inner)), pad...)
	if noCsum {
		off := 14 + 20 + 6
		if typ == layers.EthernetTypeIPv6 {
			off = 14 + 40 + 6
		}
		binary.BigEndian.PutUint16(out[off:], 0)
	}
	return out
}

func gueTo(k VIPKey, client, vip string, port uint16, noCsum bool) func(testing.TB, *fixture, []byte) []byte {
	return func(t testing.TB, f *fixture, in []byte) []byte {
		b := f.pick(k, client, vip)
		return expectGUE(t, in, backendAddr(b), b, netip.MustParseAddrPort(client), port, noCsum)
	}
}

// noUDPCsum clears the UDP checksum of an IPv4 datagram without options.
func noUDPCsum(b []byte) []byte {
	binary.BigEndian.PutUint16(b[14+20+6:], 0)
	return b
}

// gueCases are the packet cases of forward gue: exact frames with valid
// checksums, in every family combination, for TCP, UDP and an ICMP error.
func gueCases() []pktCase {
	const (
		vip4    = "10.0.0.105:80"
		vip4udp = "10.0.0.105:53"
		vip6    = "[2001:db8::105]:443"
		vip4to6 = "10.0.0.106:53"
	)
	return []pktCase{
		{name: "gue v4 tcp syn", in: tcp4(synSeg, vip4), act: xdpTx, want: gueTo(vGUE, client4, vip4, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1}, vip: vGUE, backend: fixed(12), flow: tracked(client4, vip4, TCP, fixed(12))},
		{name: "gue v4 tcp ack with payload", in: tcp4(ackSeg, vip4), act: xdpTx, want: gueTo(vGUE, client4, vip4, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: vGUE, backend: fixed(12)},
		{name: "gue v4 tcp ip options", in: func(t testing.TB) []byte { return pkt4(t, client4, vip4, ackSeg, nopOptions...) },
			act: xdpTx, want: gueTo(vGUE, client4, vip4, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: vGUE, backend: fixed(12)},
		{name: "gue v4 udp to its own port", in: tcp4(udpDg, vip4udp), act: xdpTx, want: gueTo(vGUEUDP, client4, vip4udp, 5555, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: vGUEUDP, backend: fixed(13)},
		{name: "gue v4 udp without checksum: outer checksum 0", in: mutate(tcp4(udpDg, vip4udp), noUDPCsum), act: xdpTx,
			want: gueTo(vGUEUDP, client4, vip4udp, 5555, true), stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: vGUEUDP, backend: fixed(13)},
		{name: "gue v6 tcp syn", in: tcp6(synSeg, vip6), act: xdpTx, want: gueTo(v6GUE, client6, vip6, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1}, vip: v6GUE, backend: fixed(14)},
		{name: "gue v6 tcp ack", in: tcp6(ackSeg, vip6), act: xdpTx, want: gueTo(v6GUE, client6, vip6, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: v6GUE, backend: fixed(14)},
		{name: "gue v4 in v6 udp", in: tcp4(udpDg, vip4to6), act: xdpTx, want: gueTo(v4GUE6, client4, vip4to6, 5555, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: v4GUE6, backend: fixed(15)},
		{name: "gue v4 in v6 udp without checksum: outer checksum 0", in: mutate(tcp4(udpDg, vip4to6), noUDPCsum), act: xdpTx,
			want: gueTo(v4GUE6, client4, vip4to6, 5555, true), stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1}, vip: v4GUE6, backend: fixed(15)},
		{name: "gue icmp frag needed", in: func(t testing.TB) []byte { return icmpFragNeeded(t, vip4, client4, ackSeg, 28) },
			act: xdpTx, want: gueTo(vGUE, client4, vip4, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1, StatICMPTooBig: 1}, vip: vGUE, backend: fixed(12)},
		{name: "gue icmp6 packet too big", in: func(t testing.TB) []byte { return icmp6TooBig(t, vip6, client6, ackSeg, 48) },
			act: xdpTx, want: gueTo(v6GUE, client6, vip6, DefaultGUEPort, false),
			stats: map[Stat]uint64{StatTxGUE: 1, StatCTMiss: 1, StatICMPTooBig: 1}, vip: v6GUE, backend: fixed(14)},
	}
}

// TestGUESourcePortsSpread: the UDP source port follows the flow, so 256
// clients (ports 40000..40255 of one address) reach a backend from many
// source ports, and one client always from the same one.
func TestGUESourcePortsSpread(t *testing.T) {
	f := newFixture(t, seed)
	ports := map[uint16]int{}
	for i := range 256 {
		client := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), uint16(40000+i)).String()
		act, out := f.run(t, pkt4(t, client, "10.0.0.105:80", synSeg))
		if act != xdpTx || out[14+9] != byte(layers.IPProtocolUDP) {
			t.Fatalf("client %s: action %d, outer protocol %d", client, act, out[14+9])
		}
		sport := binary.BigEndian.Uint16(out[14+20:])
		if sport < 0xc000 {
			t.Fatalf("client %s: source port %d outside 49152-65535", client, sport)
		}
		if _, again := f.run(t, pkt4(t, client, "10.0.0.105:80", ackSeg)); binary.BigEndian.Uint16(again[14+20:]) != sport {
			t.Fatalf("client %s: source port changed within the flow", client)
		}
		ports[sport]++
	}
	if len(ports) < 200 {
		t.Fatalf("256 flows used only %d source ports", len(ports))
	}
	t.Logf("256 flows, %d distinct GUE source ports", len(ports))
}
