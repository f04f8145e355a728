package loader

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// FuzzDatapath feeds arbitrary frames to the load balancer. Whatever it
// sends with XDP_TX must be a well-formed IPIP or GUE encapsulation (with a
// valid or zero UDP checksum) or MAC rewrite of a packet addressed to a
// configured VIP; anything it passes must be untouched.
func FuzzDatapath(f *testing.F) {
	fx := newFixture(f, seed)
	for _, tc := range append(pktCases(), gueCases()...) {
		f.Add(tc.in(f))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		if len(in) < 14 || len(in) > 1500 {
			return // the kernel refuses test runs below an Ethernet header
		}
		orig := append([]byte(nil), in...)
		act, out := fx.run(t, in)
		switch act {
		case xdpPass:
			if !bytes.Equal(out, orig) {
				t.Fatalf("XDP_PASS modified the frame\n in %x\nout %x", orig, out)
			}
		case xdpTx:
			if err := checkTX(orig, out); err != nil {
				t.Fatalf("%v\n in %x\nout %x", err, orig, out)
			}
		case xdpDrop:
		default:
			t.Fatalf("unexpected action %d", act)
		}
	})
}

var vipAddrs = func() map[netip.Addr]bool {
	m := map[netip.Addr]bool{}
	for _, v := range testVIPs {
		m[v.key.Addr] = true
	}
	return m
}()

// ipPacket returns the IP packet at b (by its header's own length), its
// destination and version.
func ipPacket(b []byte) ([]byte, netip.Addr, error) {
	if len(b) < 1 {
		return nil, netip.Addr{}, fmt.Errorf("no IP header")
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return nil, netip.Addr{}, fmt.Errorf("short IPv4 header")
		}
		n := int(binary.BigEndian.Uint16(b[2:]))
		if n < int(b[0]&0xf)*4 || n > len(b) {
			return nil, netip.Addr{}, fmt.Errorf("IPv4 length %d of %d", n, len(b))
		}
		return b[:n], netip.AddrFrom4([4]byte(b[16:20])), nil
	case 6:
		if len(b) < 40 {
			return nil, netip.Addr{}, fmt.Errorf("short IPv6 header")
		}
		n := 40 + int(binary.BigEndian.Uint16(b[4:]))
		if n > len(b) {
			return nil, netip.Addr{}, fmt.Errorf("IPv6 length %d of %d", n, len(b))
		}
		return b[:n], netip.AddrFrom16([16]byte(b[24:40])), nil
	}
	return nil, netip.Addr{}, fmt.Errorf("IP version %d", b[0]>>4)
}

func backendByMAC(mac []byte) (uint32, bool) {
	for idx := range testBackends {
		if bytes.Equal(mac, backendMAC(idx)) {
			return idx, true
		}
	}
	return 0, false
}

// gueOf is the GUE port of the VIP backend idx belongs to, if it is GUE.
func gueOf(idx uint32) (uint16, bool) {
	for _, v := range testVIPs {
		for _, b := range v.backends {
			if b == idx && v.fwd == ForwardGUE {
				return cmp.Or(v.guePort, DefaultGUEPort), true
			}
		}
	}
	return 0, false
}

// checkGUE checks the UDP header of GUE at udp (the rest of the frame)
// around inner; pseudo is the sum of the outer pseudo-header's addresses.
// The data plane derives the UDP checksum from the inner packet's own
// checksums, so it must verify exactly when they do (a corrupt inner
// packet stays detectably corrupt), and be 0 only for UDP over IPv4
// without a checksum.
func checkGUE(udp, inner []byte, port uint16, pseudo uint32) error {
	n := len(inner)
	if len(udp) < 8+n || binary.BigEndian.Uint16(udp[2:]) != port || binary.BigEndian.Uint16(udp[0:]) < 0xc000 ||
		int(binary.BigEndian.Uint16(udp[4:])) != 8+n {
		return fmt.Errorf("bad GUE UDP header %x (port %d, inner %d bytes)", udp[:min(8, len(udp))], port, n)
	}
	valid, csum0 := innerChecksums(inner)
	if binary.BigEndian.Uint16(udp[6:]) == 0 {
		if !csum0 {
			return fmt.Errorf("GUE UDP checksum 0 for an inner packet that has checksums")
		}
		return nil
	}
	if ok := fold(pseudo+17+uint32(8+n)+sum16(udp[:8+n])) == 0xffff; ok != valid {
		return fmt.Errorf("GUE UDP checksum verifies: %v, inner checksums verify: %v", ok, valid)
	}
	return nil
}

// innerChecksums reports whether an IP packet's checksums verify taken
// together (its IPv4 header's and its L4 segment's: what the data plane
// relies on; errors in both that cancel out go unseen), and whether it is
// UDP over IPv4 without a checksum.
func innerChecksums(ip []byte) (valid, csum0 bool) {
	var sum uint32
	var seg []byte
	var proto byte
	if ip[0]>>4 == 4 {
		hl := int(ip[0]&0xf) * 4
		proto, seg = ip[9], ip[hl:]
		if proto == 17 && len(seg) >= 8 && binary.BigEndian.Uint16(seg[6:]) == 0 {
			return true, true
		}
		sum = sum16(ip[:hl]) // 0xffff (that is, 0) when valid
		if proto != 1 {
			sum += sum16(ip[12:20]) + uint32(proto) + uint32(len(seg)) + 0xffff
		}
	} else {
		proto, seg = ip[6], ip[40:]
		sum = sum16(ip[8:40]) + uint32(proto) + uint32(len(seg))
	}
	return fold(sum+sum16(seg)) == 0xffff, false
}

func fold(s uint32) uint32 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return s
}

// sum16 is the one's-complement sum of b's 16-bit words, unfolded; an
// odd last byte counts as its high half.
func sum16(b []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func checkTX(in, out []byte) error {
	if !bytes.Equal(out[6:12], lbMAC) {
		return fmt.Errorf("source MAC %x is not the LB's", out[6:12])
	}
	idx, ok := backendByMAC(out[0:6])
	if !ok {
		return fmt.Errorf("destination MAC %x is no backend's", out[0:6])
	}
	inner, dst, err := ipPacket(in[14:])
	if err != nil {
		return fmt.Errorf("input: %v", err)
	}
	if !vipAddrs[dst] {
		return fmt.Errorf("input goes to %s, not a VIP", dst)
	}
	if len(out) == len(in) { // dsr: only the MACs change
		if !bytes.Equal(out[12:], in[12:]) {
			return fmt.Errorf("dsr changed more than the MACs")
		}
		return nil
	}
	outer := out[14:]
	be := netip.MustParseAddr(testBackends[idx])
	port, gue := gueOf(idx)
	udp := 0
	if gue {
		udp = 8
	}
	var hdr int
	switch outer[0] >> 4 {
	case 4:
		hdr = 20 + udp
		proto := byte(4)
		if gue {
			proto = 17
		}
		if binary.BigEndian.Uint16(out[12:]) != 0x0800 || outer[0] != 0x45 || outer[8] != 64 || outer[9] != proto {
			return fmt.Errorf("bad outer IPv4 header %x", outer[:20])
		}
		if int(binary.BigEndian.Uint16(outer[2:])) != hdr+len(inner) {
			return fmt.Errorf("outer length %d, inner %d", binary.BigEndian.Uint16(outer[2:]), len(inner))
		}
		var sum uint32
		for i := 0; i < 20; i += 2 {
			sum += uint32(binary.BigEndian.Uint16(outer[i:]))
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			return fmt.Errorf("outer IPv4 checksum wrong")
		}
		if netip.AddrFrom4([4]byte(outer[16:20])) != be {
			return fmt.Errorf("outer destination is not backend %s", be)
		}
		if gue {
			if err := checkGUE(outer[20:], inner, port, sum16(outer[12:20])); err != nil {
				return err
			}
		}
	case 6:
		hdr = 40 + udp
		next := byte(41)
		if inner[0]>>4 == 4 {
			next = 4
		}
		if gue {
			next = 17
		}
		if binary.BigEndian.Uint16(out[12:]) != 0x86dd || outer[6] != next || outer[7] != 64 ||
			int(binary.BigEndian.Uint16(outer[4:])) != udp+len(inner) {
			return fmt.Errorf("bad outer IPv6 header %x", outer[:40])
		}
		if netip.AddrFrom16([16]byte(outer[24:40])) != be {
			return fmt.Errorf("outer destination is not backend %s", be)
		}
		if gue {
			if err := checkGUE(outer[40:], inner, port, sum16(outer[8:40])); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("output is neither dsr nor ipip")
	}
	if len(out) != len(in)+hdr || !bytes.Equal(outer[hdr:], in[14:]) {
		return fmt.Errorf("encapsulated payload differs from the input packet")
	}
	return nil
}
