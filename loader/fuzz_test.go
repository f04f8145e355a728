package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
)

// FuzzDatapath feeds arbitrary frames to the load balancer. Whatever it
// sends with XDP_TX must be a well-formed IPIP encapsulation or MAC rewrite
// of a packet addressed to a configured VIP; anything it passes must be
// untouched.
func FuzzDatapath(f *testing.F) {
	fx := newFixture(f, seed)
	for _, tc := range pktCases() {
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
	var hdr int
	switch outer[0] >> 4 {
	case 4:
		hdr = 20
		if binary.BigEndian.Uint16(out[12:]) != 0x0800 || outer[0] != 0x45 || outer[8] != 64 || outer[9] != 4 {
			return fmt.Errorf("bad outer IPv4 header %x", outer[:20])
		}
		if int(binary.BigEndian.Uint16(outer[2:])) != 20+len(inner) {
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
	case 6:
		hdr = 40
		next := byte(41)
		if inner[0]>>4 == 4 {
			next = 4
		}
		if binary.BigEndian.Uint16(out[12:]) != 0x86dd || outer[6] != next || outer[7] != 64 ||
			int(binary.BigEndian.Uint16(outer[4:])) != len(inner) {
			return fmt.Errorf("bad outer IPv6 header %x", outer[:40])
		}
		if netip.AddrFrom16([16]byte(outer[24:40])) != be {
			return fmt.Errorf("outer destination is not backend %s", be)
		}
	default:
		return fmt.Errorf("output is neither dsr nor ipip")
	}
	if len(out) != len(in)+hdr || !bytes.Equal(outer[hdr:], in[14:]) {
		return fmt.Errorf("encapsulated payload differs from the input packet")
	}
	return nil
}
