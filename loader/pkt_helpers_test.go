package loader

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/sluicelb/sluice/loader/internal/layout"
)

// The test topology's MAC addresses.
var (
	clientMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x0c}
	lbMAC     = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

func backendMAC(idx uint32) net.HardwareAddr {
	return net.HardwareAddr{0x02, 0, 0, 0, 0xbe, byte(idx)}
}

// rawPort is a port as the data plane holds it: network order bytes read natively.
func rawPort(p uint16) uint32 { return uint32(layout.Htons(p)) }

func flowHash(src, dst netip.AddrPort, proto Proto, seed uint32) uint32 {
	return FlowHash(src, dst, proto, seed)
}

func encapEntropy(src netip.AddrPort) uint32 {
	w := layout.Words(src.Addr())
	x := (w[0] ^ w[1] ^ w[2] ^ w[3] ^ rawPort(src.Port())) * 0x9e3779b1
	return x ^ x>>16
}

// outerSrc4 is the IPIP outer source the data plane derives for a client.
func outerSrc4(prefix netip.Addr, client netip.AddrPort) netip.Addr {
	b := prefix.As4()
	binary.BigEndian.PutUint16(b[2:], uint16(encapEntropy(client)))
	return netip.AddrFrom4(b)
}

func outerSrc6(prefix netip.Addr, client netip.AddrPort) netip.Addr {
	b := prefix.As16()
	binary.NativeEndian.PutUint32(b[12:], encapEntropy(client))
	return netip.AddrFrom16(b)
}

// --- packet builders ---

func serialize(t testing.TB, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatalf("serialize: %v", err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

func eth(typ layers.EthernetType) *layers.Ethernet {
	return &layers.Ethernet{SrcMAC: clientMAC, DstMAC: lbMAC, EthernetType: typ}
}

type l4 struct {
	proto   Proto
	syn     bool
	ack     bool
	payload []byte
}

var (
	synSeg = l4{proto: TCP, syn: true}
	ackSeg = l4{proto: TCP, ack: true, payload: []byte("hello")}
	udpDg  = l4{proto: UDP, payload: []byte("query")}
)

func l4Layers(t testing.TB, seg l4, src, dst netip.AddrPort, nl gopacket.NetworkLayer) []gopacket.SerializableLayer {
	switch seg.proto {
	case TCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(src.Port()), DstPort: layers.TCPPort(dst.Port()),
			SYN: seg.syn, ACK: seg.ack, Seq: 1000, Window: 512}
		if err := tcp.SetNetworkLayerForChecksum(nl); err != nil {
			t.Fatal(err)
		}
		return []gopacket.SerializableLayer{tcp, gopacket.Payload(seg.payload)}
	default:
		udp := &layers.UDP{SrcPort: layers.UDPPort(src.Port()), DstPort: layers.UDPPort(dst.Port())}
		if err := udp.SetNetworkLayerForChecksum(nl); err != nil {
			t.Fatal(err)
		}
		return []gopacket.SerializableLayer{udp, gopacket.Payload(seg.payload)}
	}
}

func ipProto(p Proto) layers.IPProtocol { return layers.IPProtocol(p) }

// pkt4 builds Ethernet + IPv4 (+ options) + TCP/UDP from src to dst.
func pkt4(t testing.TB, src, dst string, seg l4, opts ...layers.IPv4Option) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	ip := &layers.IPv4{Version: 4, TTL: 63, Protocol: ipProto(seg.proto), Flags: layers.IPv4DontFragment,
		SrcIP: s.Addr().AsSlice(), DstIP: d.Addr().AsSlice(), Options: opts, TOS: 0x10}
	return serialize(t, append([]gopacket.SerializableLayer{eth(layers.EthernetTypeIPv4), ip}, l4Layers(t, seg, s, d, ip)...)...)
}

func pkt6(t testing.TB, src, dst string, seg l4) []byte {
	s, d := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst)
	ip := &layers.IPv6{Version: 6, HopLimit: 63, NextHeader: ipProto(seg.proto), TrafficClass: 0x28,
		SrcIP: s.Addr().AsSlice(), DstIP: d.Addr().AsSlice()}
	return serialize(t, append([]gopacket.SerializableLayer{eth(layers.EthernetTypeIPv6), ip}, l4Layers(t, seg, s, d, ip)...)...)
}

// expectIPIP4 is the exact frame the data plane must send for an IPv4 outer header.
// innerPacket splits a frame's IP packet (by its header's length) from any
// Ethernet padding after it; the padding stays at the end of the frame.
func innerPacket(in []byte) (inner, pad []byte) {
	ip := in[14:]
	n := int(binary.BigEndian.Uint16(ip[2:4]))
	if ip[0]>>4 == 6 {
		n = 40 + int(binary.BigEndian.Uint16(ip[4:6]))
	}
	return ip[:n], ip[n:]
}

// outer4 is the outer IPv4 header the data plane puts in front of an
// IPv4 inner packet (TOS and DF copied), with protocol proto.
func outer4(inner []byte, be netip.Addr, client netip.AddrPort, proto layers.IPProtocol) *layers.IPv4 {
	var flags layers.IPv4Flag
	if inner[6]&0x40 != 0 {
		flags = layers.IPv4DontFragment
	}
	return &layers.IPv4{Version: 4, IHL: 5, TOS: inner[1], TTL: 64, Protocol: proto, Flags: flags,
		SrcIP: outerSrc4(DefaultEncapSrc4, client).AsSlice(), DstIP: be.AsSlice()}
}

// outer6 is the outer IPv6 header in front of inner (traffic class
// copied, flow label from the client), with next header next; 0 takes the
// inner packet's family (IPIP or IP6IP6).
func outer6(inner []byte, be netip.Addr, client netip.AddrPort, next layers.IPProtocol) *layers.IPv6 {
	tc := inner[0]<<4 | inner[1]>>4
	family := layers.IPProtocolIPv6
	if inner[0]>>4 == 4 {
		tc, family = inner[1], layers.IPProtocolIPv4
	}
	if next == 0 {
		next = family
	}
	return &layers.IPv6{Version: 6, TrafficClass: tc, FlowLabel: encapEntropy(client) & 0xfffff, HopLimit: 64,
		NextHeader: next, SrcIP: outerSrc6(DefaultEncapSrc6, client).AsSlice(), DstIP: be.AsSlice()}
}

func expectIPIP4(t testing.TB, in []byte, be netip.Addr, beIdx uint32, client netip.AddrPort) []byte {
	inner, pad := innerPacket(in)
	e := &layers.Ethernet{SrcMAC: lbMAC, DstMAC: backendMAC(beIdx), EthernetType: layers.EthernetTypeIPv4}
	return append(serialize(t, e, outer4(inner, be, client, layers.IPProtocolIPv4), gopacket.Payload(inner)), pad...)
}

func expectIPIP6(t testing.TB, in []byte, be netip.Addr, beIdx uint32, client netip.AddrPort) []byte {
	inner, pad := innerPacket(in)
	e := &layers.Ethernet{SrcMAC: lbMAC, DstMAC: backendMAC(beIdx), EthernetType: layers.EthernetTypeIPv6}
	return append(serialize(t, e, outer6(inner, be, client, 0), gopacket.Payload(inner)), pad...)
}

// expectDSR is the input with only the MACs rewritten.
func expectDSR(in []byte, beIdx uint32) []byte {
	out := append([]byte(nil), in...)
	copy(out[0:6], backendMAC(beIdx))
	copy(out[6:12], lbMAC)
	return out
}
